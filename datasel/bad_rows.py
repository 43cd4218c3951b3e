"""JSONL lines that cannot become rows: find them, say why, and keep them as skipped records.

A line is bad when it is not valid UTF-8, not valid JSON, not a JSON object, or when one of its
fields has another JSON kind (number, string, boolean, object, array) than in the earlier rows
(`"score": 1` then `"score": "x"`): Arrow, like Parquet, holds one type per column. With
`--on-bad-rows error` (the default) the first bad line stops the run with its file and line;
with `skip` bad lines are left out and written to `<step>/_skipped/` with a reason.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

ON_BAD_ROWS = ("error", "skip")
# reasons, counted in the manifest
MALFORMED_JSON = "malformed_json"
INVALID_UTF8 = "invalid_utf8"
NOT_AN_OBJECT = "not_an_object"
TYPE_CHANGE = "type_change"

SKIPPED_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("line", pa.int64()),  # 1-based, in the whole file
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("raw", pa.binary()),  # the line's bytes, as they were
    ]
)


def check_mode(mode: str) -> None:
    if mode not in ON_BAD_ROWS:
        raise ValueError(f"on_bad_rows must be error or skip, got {mode!r}")


@dataclass(frozen=True)
class BadLine:
    line: int  # 1-based line number in the file
    reason: str
    detail: str
    raw: bytes


def hint(path: str, bad: BadLine) -> str:
    """The one-line error for a bad line under --on-bad-rows error."""
    return f"{path}:{bad.line}: {bad.detail} (--on-bad-rows skip leaves such lines out)"


def find_bad_lines(lines: list[tuple[int, bytes]]) -> dict[int, BadLine]:
    """The bad lines among (1-based line number, raw bytes) pairs, by their position in
    `lines`. Each line's JSON kinds are compared with the kinds of the good lines before it,
    field by field and inside nested objects and arrays, as Arrow's JSON reader does."""
    bad: dict[int, BadLine] = {}
    seen: dict[str, str] = {}  # field path -> JSON kind of its first non-null value
    for k, (number, raw) in enumerate(lines):
        problem = _line_problem(raw)
        if isinstance(problem, tuple):
            bad[k] = BadLine(number, *problem, raw)
            continue
        kinds: dict[str, str] = {}
        change = _kinds(problem, "", kinds, seen)
        if change is not None:
            bad[k] = BadLine(number, TYPE_CHANGE, change, raw)
        else:
            seen.update(kinds)
    return bad


def is_good_line(raw: bytes) -> bool:
    """Whether a line is a UTF-8 JSON object (its types are not checked)."""
    return isinstance(_line_problem(raw), dict)


def _line_problem(raw: bytes):
    """The parsed object, or (reason, detail) when the line is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return INVALID_UTF8, f"not valid UTF-8 (byte {e.start} of the line)"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return MALFORMED_JSON, f"malformed JSON: {e.msg} (column {e.colno})"
    except RecursionError:
        return MALFORMED_JSON, "malformed JSON: nested too deeply"
    if not isinstance(obj, dict):
        return NOT_AN_OBJECT, f"each line must be a JSON object, got {type(obj).__name__}"
    return obj


_KIND = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def _kinds(value, path: str, kinds: dict[str, str], seen: dict[str, str]) -> str | None:
    """Record the JSON kind of `value` and of everything inside it under their paths; return
    how the first kind that differs from `seen` (or from this line's own) differs."""
    if value is None:
        return None
    kind = _KIND.get(type(value), "a number")
    earlier = kinds.get(path) or seen.get(path)
    if earlier is not None and earlier != kind:
        where = path[1:].replace("/[]", "[]").replace("/", ".") or "the line"
        return f"type change: '{where}' holds {kind} here, {earlier} in earlier rows"
    kinds[path] = kind
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((None, v) for v in value)
    else:
        return None
    for key, v in items:
        change = _kinds(v, f"{path}/[]" if key is None else f"{path}/{key}", kinds, seen)
        if change is not None:
            return change
    return None


_ARROW_ROW = re.compile(r" in row (\d+)\s*$")


def arrow_row(err: Exception) -> int | None:
    """The row (counting non-blank lines from 0) that Arrow's JSON reader stopped at."""
    m = _ARROW_ROW.search(str(err).splitlines()[0] if str(err) else "")
    return int(m.group(1)) if m else None


def arrow_message(err: Exception) -> str:
    msg = (str(err).splitlines() or [""])[0].replace("JSON parse error: ", "")
    return _ARROW_ROW.sub("", msg)


def skipped_table(path: str, bad: list[BadLine]) -> pa.Table:
    """Skipped lines as rows of `_skipped/`, in line order."""
    bad = sorted(bad, key=lambda b: b.line)
    return pa.table(
        {
            "file": [path] * len(bad),
            "line": [b.line for b in bad],
            "reason": [b.reason for b in bad],
            "detail": [b.detail for b in bad],
            "raw": [b.raw for b in bad],
        },
        schema=SKIPPED_SCHEMA,
    )


def count(bad: list[BadLine]) -> dict[str, int]:
    return dict(Counter(b.reason for b in bad))
