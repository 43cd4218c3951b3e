"""Target-model likelihood picking: keep the candidate response the target model finds most likely.

Zhang et al., "The Best Instruction-Tuning Data are Those That Fit" (GRAPE, 2025).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datasel.errors import DataselError
from datasel.io import Columns
from datasel.stage import (
    Context,
    Decision,
    MapResult,
    Needs,
    Stage,
    Staged,
    blank_texts,
    count_texts,
    param,
    register,
)
from scorers.models import model_size

ALPACA = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
ALPACA_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"


NO_CANDIDATES = -1  # pick_candidate of the stand-in row of an instruction with none


@register
@dataclass(kw_only=True)
class Pick(Stage):
    """Keep, for each instruction, the candidate response(s) the target model finds most likely.

    Input: one row per instruction with a list column of candidates (strings, or structs with a
    text and a source field), or one row per candidate with --group-by. Output: one row per
    picked candidate with `response`, `pick_logprob`, `pick_source` and `pick_scores` (every
    candidate's score, for auditing); the others go to _removed/ with their scores.

    Only candidates with at least --min-response-tokens response tokens compete: an empty,
    whitespace-only or null one is never scored (its `pick_logprob` and `pick_tokens` are null)
    and goes to _removed/ as `pick:empty`, a shorter one as `pick:response_tokens<N`; when no
    candidate of an instruction is left, all of them go as `pick:no_valid_candidate`, and an
    instruction whose list is empty or null goes as one row, `pick:no_candidates`; with
    --group-by, a candidate whose group is null belongs to no instruction and goes as
    `pick:<group-by> missing`; the candidates of an instruction whose instruction and input
    are both null, empty or only whitespace are not scored (there is nothing to condition on)
    and go as `pick:empty_instruction`. The others are ranked by score; equal scores rank by the
    candidates' order (position in the list, or in the input with --group-by), so the earlier
    one wins. Identical responses to the same prompt are scored once, so they tie exactly.
    With one row per instruction, each row is its own instruction, even where ids repeat.
    """

    name = "pick"
    example = "datasel pick sft-candidates.jsonl picked/ --model models/target-lm --responses-column responses"
    needs = Needs(text=False, model=True, gpus=1, single_process=True, cut_by_model_size=True)

    model: str = param(help="the target model: local HF folder, .gguf file, or hub name")
    instruction_column: str = param("instruction", help="column with the instruction")
    input_column: str | None = param(
        "input", help="optional column with extra input for the instruction"
    )
    responses_column: str = param(
        "responses", help="list column of candidates (one row per instruction)"
    )
    group_by: str | None = param(
        None, help="one row per candidate: column that identifies the instruction"
    )
    response_column: str = param(
        "response", help="with --group-by: column with the candidate's text"
    )
    source_column: str | None = param(
        None, help="with --group-by: column naming the candidate's source"
    )
    text_field: str = param("text", help="field of a candidate struct holding its text")
    source_field: str = param("model", help="field of a candidate struct naming its source")
    normalize: str = param("mean", help="mean (log-probability per response token) | sum")
    top_k: int = param(1, help="candidates kept per instruction")
    min_response_tokens: int = param(
        1, help="candidates with fewer response tokens are removed, never picked"
    )
    chat_template: str = param(
        "auto", help="auto (the model's, when it has one) | none | PATH to a Jinja template"
    )
    prompt_template: str | None = param(
        None, help="plain template with {instruction} and {input} (default: Alpaca's)"
    )
    batch_tokens: int | None = param(
        None, help="tokens per forward pass, padding included (default: 16384 on GPU, 2048 on CPU)"
    )
    device: str = param("auto", help="auto | cpu | cuda")

    def __post_init__(self):
        if self.normalize not in ("mean", "sum"):
            raise ValueError(f"normalize must be mean or sum, got {self.normalize!r}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.min_response_tokens < 1:
            raise ValueError(
                f"min_response_tokens must be at least 1, got {self.min_response_tokens}"
            )
        if self.chat_template not in ("auto", "none") and not Path(self.chat_template).is_file():
            raise ValueError(
                f"chat_template {self.chat_template}: no such file (or use auto | none)"
            )

    def lm(self):
        from datasel.stages.score import load_causal_lm

        return self.loaded("lm", lambda: load_causal_lm(self.model, self.device))

    def model_size(self, ctx: Context) -> tuple[int, str]:
        return model_size(self.lm().model, self.lm().device)

    def check(self) -> None:
        from datasel.stages.score import check_lm

        check_lm(self.model, "pick")

    def reads(self, columns: Columns) -> dict[str, str]:
        if self.group_by is None:
            named = {"responses_column": self.responses_column}
        else:
            named = {"group_by": self.group_by, "response_column": self.response_column}
            named["source_column"] = self.source_column
        named["instruction_column"] = self.instruction_column
        return {col: key.replace("_", "-") for key, col in named.items() if col}

    def outputs(self, names: set[str], columns: Columns) -> set[str]:
        added = {"response", "pick_source", "pick_candidate", "pick_logprob", "pick_tokens"}
        if self.group_by is None:
            names = names - {self.responses_column}
        return names | added | {"pick_scores", "pick_rank"}

    def fit(self, ctx: Context) -> None:
        self.lm()

    # ------------------------------------------------------------------ prompts
    def prompt(self, instruction: str, extra: str) -> str:
        tok = self.lm().tokenizer
        user = instruction if not extra else f"{instruction}\n\n{extra}"
        if self.chat_template != "none" and (
            self.chat_template != "auto" or getattr(tok, "chat_template", None)
        ):
            template = (
                Path(self.chat_template).read_text() if self.chat_template != "auto" else None
            )
            return tok.apply_chat_template(
                [{"role": "user", "content": user}],
                chat_template=template,
                tokenize=False,
                add_generation_prompt=True,
            )
        if self.prompt_template:
            return self.prompt_template.format(instruction=instruction, input=extra)
        return (ALPACA if extra else ALPACA_NO_INPUT).format(instruction=instruction, input=extra)

    # ------------------------------------------------------------------ map
    def map(self, batch: pa.RecordBatch, ctx: Context) -> MapResult:
        table = pa.Table.from_batches([batch])
        cands = self._candidates(table)
        instructions = table.column(self.instruction_column).to_pylist()
        extras = (
            table.column(self.input_column).to_pylist()
            if self.input_column and self.input_column in table.column_names
            else [""] * table.num_rows
        )
        blank = blank_texts(cands["response"])
        # no instruction and no input: nothing to condition on, so no score (empty_instruction)
        no_prompt = blank_texts(_as_text(instructions)) & blank_texts(_as_text(extras))
        no_prompt = no_prompt[np.asarray(cands["row"], dtype=np.int64)]
        unscored = blank | no_prompt
        cache: dict[int, str] = {}
        pairs: dict[tuple[str, str], int] = {}  # each distinct (prompt, response) scored once
        which = np.full(len(blank), -1, dtype=np.int64)
        for i, row in enumerate(cands["row"]):
            if unscored[i]:
                continue
            if row not in cache:
                cache[row] = self.prompt(instructions[row] or "", extras[row] or "")
            which[i] = pairs.setdefault((cache[row], cands["response"][i]), len(pairs))
        score = np.full(len(blank), np.nan)
        n = np.zeros(len(blank), np.int64)
        if pairs:
            from scorers.lm import score_conditional

            logprob, tokens = score_conditional(
                self.lm(),
                [p for p, _ in pairs],
                [r for _, r in pairs],
                batch_tokens=self.batch_tokens,
            )
            if self.normalize == "mean":
                logprob = logprob / np.maximum(tokens, 1)
            score[~unscored], n[~unscored] = logprob[which[~unscored]], tokens[which[~unscored]]
        score = pa.array(score, pa.float64(), mask=unscored)
        n = pa.array(n, pa.int64(), mask=unscored)
        out = table.take(pa.array(cands["row"]))
        if self.group_by is None:
            out = out.drop_columns([self.responses_column])
        for name in (
            "response",
            "pick_source",
            "pick_candidate",
            "pick_logprob",
            "pick_tokens",
            "_group",
        ):
            if name in out.column_names:
                out = out.drop_columns([name])
        out = out.append_column("response", pa.array(cands["response"], pa.string()))
        out = out.append_column("pick_source", _as_text(cands["source"]))  # a name or a number
        out = out.append_column("pick_candidate", pa.array(cands["index"], pa.int32()))
        out = out.append_column("pick_logprob", score)
        out = out.append_column("pick_tokens", n)
        out = out.append_column("_group", pa.array(cands["group"], pa.string()))
        return MapResult(
            out,
            arrays={"pick_no_prompt": no_prompt},
            rows_in=len(cands["response"]),
            texts=count_texts(cands["response"]),
        )

    def _candidates(self, table: pa.Table) -> dict[str, list]:
        """Flatten the batch to one entry per candidate: row, group, index, response, source."""
        need = [self.instruction_column] + (
            [self.group_by, self.response_column] if self.group_by else [self.responses_column]
        )
        for col in need:
            if col not in table.column_names:
                have = ", ".join(table.column_names)
                raise DataselError(f"pick: no column '{col}'; columns are: {have}")
        if self.group_by:
            resp = table.column(self.response_column)
            if not pa.types.is_string(resp.type) and not pa.types.is_large_string(resp.type):
                raise DataselError(
                    f"pick: --response-column '{self.response_column}' holds {resp.type}, not text"
                )
            src = (
                table.column(self.source_column).to_pylist()
                if self.source_column
                else [None] * table.num_rows
            )
            rows = list(range(table.num_rows))
            return {
                "row": rows,
                "group": [
                    None if g is None else str(g) for g in table.column(self.group_by).to_pylist()
                ],
                "index": [0] * table.num_rows,
                "response": resp.to_pylist(),
                "source": src,
            }
        col = table.column(self.responses_column)
        typ = col.type
        if not (pa.types.is_list(typ) or pa.types.is_large_list(typ)):
            raise DataselError(
                f"pick: --responses-column '{self.responses_column}' holds {typ}, not a list of candidates"
            )
        lengths = pc.list_value_length(pc.fill_null(col, pa.scalar([], typ))).to_numpy()
        ids = table.column("id").to_pylist()
        value = typ.value_type
        if pa.types.is_struct(value):
            fields = [value.field(i).name for i in range(value.num_fields)]
            if self.text_field not in fields:
                raise DataselError(
                    f"pick: candidates have fields {fields}; none is '{self.text_field}' (use --text-field)"
                )
            text_type = value.field(self.text_field).type
            if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
                if not pa.types.is_null(text_type):  # null: every candidate is empty
                    raise DataselError(
                        f"pick: the candidates' '{self.text_field}' field holds {text_type}, not text"
                    )
        elif not (pa.types.is_string(value) or pa.types.is_large_string(value)):
            raise DataselError(
                f"pick: '{self.responses_column}' is a list of {value}; expected strings or structs"
            )
        flat = pc.list_flatten(col)
        if pa.types.is_struct(value):
            texts = (
                flat.field(self.text_field).to_pylist()
                if hasattr(flat, "field")
                else pc.struct_field(flat, self.text_field).to_pylist()
            )
            has_source = self.source_field in [value.field(i).name for i in range(value.num_fields)]
            sources = (
                pc.struct_field(flat, self.source_field).to_pylist()
                if has_source
                else [None] * len(texts)
            )
        else:
            texts, sources = flat.to_pylist(), [None] * len(flat)
        # an instruction with no candidate (an empty or null list) stands as one null
        # candidate, index NO_CANDIDATES, so that it is removed with its reason, not lost
        counts = np.maximum(lengths, 1).astype(np.int64)
        rows = np.repeat(np.arange(table.num_rows), counts)
        index = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        real = lengths[rows] > 0
        index[~real] = NO_CANDIDATES
        response = np.full(len(rows), None, dtype=object)
        source = np.full(len(rows), None, dtype=object)
        response[real], source[real] = texts, sources
        return {
            "row": rows.tolist(),
            "group": [ids[r] for r in rows],
            "index": index.tolist(),
            "response": response.tolist(),
            "source": source.tolist(),
        }

    # ------------------------------------------------------------------ select
    def select(self, staged: Staged, ctx: Context) -> Decision:
        score = staged.column("pick_logprob").to_numpy(zero_copy_only=False)
        tokens = staged.column("pick_tokens")
        no_prompt = staged.concat("pick_no_prompt", bool)
        empty = tokens.is_null().to_numpy(zero_copy_only=False) & ~no_prompt
        short = ~empty & (tokens.fill_null(0).to_numpy() < self.min_response_tokens)
        n = len(score)
        candidate = staged.column("pick_candidate").to_numpy(zero_copy_only=False)
        missing = np.zeros(n, dtype=bool)  # --group-by: a candidate whose group is null
        if self.group_by is None:
            # an instruction's candidates are staged together, the first with index 0 (or
            # NO_CANDIDATES): a group is that run of rows, even where two rows share an id
            gid = np.cumsum(candidate <= 0) - 1
            n_instructions = int(gid[-1]) + 1 if n else 0
        else:
            index: dict[str, int] = {}
            groups = staged.column("_group").to_pylist()
            gid = np.array([-1 if g is None else index.setdefault(g, len(index)) for g in groups])
            missing = gid < 0
            n_instructions = len(index)
            gid[missing] = n_instructions + np.arange(int(missing.sum()))  # each on its own
        valid = ~empty & ~short & ~missing & ~no_prompt
        n_groups = int(gid.max()) + 1 if n else 0
        # valid candidates first, then highest score, then input order: ties go to the earlier
        order = np.lexsort((np.arange(n), -np.nan_to_num(score, nan=-np.inf), ~valid, gid))
        start = np.ones(n, dtype=bool)
        start[1:] = gid[order[1:]] != gid[order[:-1]]
        first = np.maximum.accumulate(np.where(start, np.arange(n), 0))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n) - first
        keep = valid & (rank < self.top_k)
        has_valid = np.bincount(gid, weights=valid, minlength=n_groups) > 0
        reason = np.char.add("pick:rank=", (rank + 1).astype(str)).astype(object)
        reason[empty] = "pick:empty"
        reason[short] = f"pick:response_tokens<{self.min_response_tokens}"
        reason[~has_valid[gid]] = "pick:no_valid_candidate"
        reason[no_prompt] = "pick:empty_instruction"
        reason[missing] = f"pick:{self.group_by} missing"
        none = candidate == NO_CANDIDATES
        reason[none] = "pick:no_candidates"
        reason[keep] = None
        # every candidate's score, in candidate order, on every row of its instruction (null
        # where it was not scored)
        by_group = [[] for _ in range(n_groups)]
        for i in np.lexsort((np.arange(n), gid)):
            by_group[gid[i]].append(None if empty[i] else float(score[i]))
        scores = pa.array([by_group[g] for g in gid], pa.list_(pa.float64()))
        ranks = pa.array(rank + 1, mask=~valid)
        sources = staged.column("pick_source").to_pylist()
        picked = [s for s, k in zip(sources, keep, strict=True) if k and s is not None]
        ctx.cutoff("pick_rank", self.top_k, f"rank ≤ {self.top_k}")
        ctx.cutoff("pick_tokens", self.min_response_tokens, f"min {self.min_response_tokens}")
        ctx.stats.update(
            {
                "instructions": n_instructions,
                "candidates": int(n - none.sum()),
                "picked": int(keep.sum()),
                "picked_by_source": {s: picked.count(s) for s in sorted(set(picked))},
                "empty_candidates": int(empty.sum()),
                "short_candidates": int(short.sum()),
                "instructions_without_valid_candidate": int((~has_valid[:n_instructions]).sum()),
                "instructions_without_candidates": int(none.sum()),
                "instructions_empty": len(np.unique(gid[no_prompt & ~none])),
            }
        )
        return Decision(
            keep=keep,
            reason=reason,
            kept_columns={"pick_scores": scores, "pick_rank": ranks},
            removed_columns={"pick_scores": scores, "pick_rank": ranks},
        )


def _as_text(values: list) -> pa.Array:
    """A column's values as strings (an instruction, input or source may be a number)."""
    return pa.array([None if v is None else str(v) for v in values], pa.string())
