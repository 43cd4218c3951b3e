"""Pipelines: a list of stages, each writing its own step folder, from Python or a YAML config.

    input: datasel:sample          # a path, a glob, or the bundled sample
    output: out/quickstart
    workers: 4                     # any run option (datasel/options.py); a flag replaces it
    steps:
      - stage: dedup
        threshold: 0.8

Step `i` reads step `i-1`'s kept rows and writes `<output>/<ii>-<stage>/`; the last step's folder
is the selected dataset. A rerun skips finished steps (same parameters and inputs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from datasel.engine import run, stage_columns
from datasel.errors import DataselError
from datasel.io import FileList, digest, find_files, fingerprint, resolve_input, write_json
from datasel.lock import FolderLock
from datasel.options import NAMES, STEP_NAMES, RunOptions, checked
from datasel.preflight import check_steps
from datasel.stage import STAGES, Stage
from datasel.step_folder import StepFolder

CONFIG_KEYS = {"input", "output", "steps", "description", *NAMES}  # and every run option


@dataclass
class Pipeline:
    """Stages run one after another, each on the previous step's kept rows.

    Examples
    --------
    >>> import datasel
    >>> p = datasel.Pipeline([datasel.Dedup(threshold=0.8)])
    >>> manifests = p.run(datasel.SAMPLE, tmp / "pipeline", quiet=True)
    >>> [m["stage"] for m in manifests]
    ['dedup']
    """

    steps: list[Stage]
    options: RunOptions = field(default_factory=RunOptions)
    # per-step run options (of STEP_NAMES), e.g. [{"text_column": "instruction"}, {}, ...]
    step_options: list[dict] | None = None
    name: str = ""  # the config file it came from, for messages

    def label(self, i: int) -> str:
        """How messages name step `i` (from 0): "run.yaml step 2 (dedup)"."""
        return f"{self.name} step {i + 1} ({self.steps[i].name})".lstrip()

    def step_dirs(self, dst: Path) -> list[Path]:
        return [dst / f"{i + 1:02d}-{s.name}" for i, s in enumerate(self.steps)]

    def run(self, src, dst, options: RunOptions | None = None, **overrides) -> list[dict]:
        """Run every step: with `options` (default: the pipeline's), some replaced by keyword
        (`quiet=True`); a step's own `step_options` win over both."""
        opts = dataclasses.replace(options or self.options, **overrides)
        dst = Path(dst)
        manifests, current = [], resolve_input(src) if not isinstance(src, FileList) else src
        per_step = self.step_options or [{}] * len(self.steps)
        find_files(current)  # a bad input or a mistake in any step fails before step 1 writes
        check_steps(
            current,
            [
                (s, stage_columns(s, dataclasses.replace(opts, **extra)), self.label(i))
                for i, (s, extra) in enumerate(zip(self.steps, per_step, strict=True))
            ],
            opts.engine,
        )
        for stage, step_dir, extra in zip(self.steps, self.step_dirs(dst), per_step, strict=True):
            manifests.append(run(stage, current, step_dir, dataclasses.replace(opts, **extra)))
            current = str(step_dir)
        return manifests

    def run_incremental(
        self, src, dst, state, options: RunOptions | None = None, **overrides
    ) -> dict | None:
        """A cron run: process only the input files no earlier run over `state` has seen.

        Each step runs as `Stage.incremental(state)` makes it (dedup without an `index` uses
        `<state>/dedup-index`, so each run dedups against everything kept before). The run's
        steps go to `<dst>/runs/<run-id>/`, its selected shards are added to `<dst>/selected/`
        and `<state>/seen.json` records its files, in that order, so a killed run redoes
        (resuming) exactly the same files. Returns the run record, or None when there is nothing
        new.
        """
        state, dst = Path(state), Path(dst)
        state.mkdir(parents=True, exist_ok=True)
        with FolderLock(state / "lock"):
            seen_path = state / "seen.json"
            seen = json.loads(seen_path.read_text()) if seen_path.exists() else {}
            files, root = find_files(src)
            prints = fingerprint(files)
            new = [
                (f, fp) for f, fp in zip(files, prints, strict=True) if _file_key(fp) not in seen
            ]
            if not new:
                return None
            run_id = digest([fp for _, fp in new])
            steps = [s.incremental(state) for s in self.steps]
            inputs = FileList(tuple(str(f) for f, _ in new), str(root))
            opts = dataclasses.replace(options or self.options, **overrides)
            manifests = Pipeline(steps, opts, self.step_options, self.name).run(
                inputs, dst / "runs" / run_id
            )
            last = Pipeline(steps).step_dirs(dst / "runs" / run_id)[-1]
            selected = dst / "selected"
            selected.mkdir(parents=True, exist_ok=True)
            for part in StepFolder(last).shards():
                if pq.ParquetFile(part).metadata.num_rows == 0:
                    continue  # an empty day adds nothing (and no id-only schema) to selected/
                target = selected / f"{run_id}-{part.name}"
                tmp = target.with_name(target.name + ".tmp")
                shutil.copyfile(part, tmp)
                os.replace(tmp, target)
            record = {
                "run": run_id,
                "files": [str(f) for f, _ in new],
                "rows_in": manifests[0]["rows_in"],
                "kept": manifests[-1]["kept"],
                "steps": [
                    {"stage": m["stage"], "kept": m["kept"], "removed": m["removed"]}
                    for m in manifests
                ],
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            write_json(record, dst / "runs" / run_id / "_run.json")
            write_json({**seen, **{_file_key(fp): run_id for _, fp in new}}, seen_path)
            return record


def _file_key(fp: dict) -> str:
    return f"{fp['path']}|{fp['size']}|{fp['mtime_ns']}"


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> tuple[Pipeline, dict]:
    """Read a YAML pipeline; `overrides` are `key=value` (top level) or `N.key=value` (step N, from 1)."""
    path = Path(path)
    if not path.exists():
        raise DataselError(f"{path}: no such config file")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataselError(f"{path}{_yaml_error(e)}") from None
    if not isinstance(config, dict):
        raise DataselError(f"{path}: a config is a mapping with 'steps', 'input' and 'output'")
    for item in overrides:
        _apply_override(config, item, path)
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise DataselError(
            f"{path}: unknown key '{sorted(unknown)[0]}'; allowed: {', '.join(sorted(CONFIG_KEYS))}"
        )
    steps = config.get("steps")
    if not isinstance(steps, list) or not steps:
        raise DataselError(f"{path}: 'steps' must be a non-empty list of {{stage: name, ...}}")
    stages, step_options = [], []
    for i, step in enumerate(steps, 1):
        where = f"{path} step {i}"
        if not isinstance(step, dict) or "stage" not in step:
            raise DataselError(
                f"{where}: each step needs a 'stage' key; stages: {', '.join(sorted(STAGES))}"
            )
        params = dict(step)
        name = params.pop("stage")
        if name not in STAGES:
            raise DataselError(
                f"{where}: unknown stage '{name}'; stages: {', '.join(sorted(STAGES))}"
            )
        own = {k: params.pop(k) for k in STEP_NAMES if k in params}
        step_options.append(checked(own, f"{where} ({name})"))
        stages.append(STAGES[name].from_params(params, f"{where} ({name})"))
    options = RunOptions.from_config(config, str(path))
    return Pipeline(stages, options, step_options, str(path)), config


def _yaml_error(e: yaml.YAMLError) -> str:
    """':LINE:COLUMN: not valid YAML: what is wrong' (1-based, as editors count)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    return f"{where}: not valid YAML: {what}"


def _apply_override(config: dict, item: str, path: Path) -> None:
    if "=" not in item:
        raise DataselError(f"--set {item!r}: expected key=value or STEP.key=value")
    key, value = item.split("=", 1)
    try:
        value = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise DataselError(f"--set {item!r}{_yaml_error(e)}") from None
    head, _, rest = key.partition(".")
    if rest and head.isdigit():
        steps = config.get("steps") if isinstance(config.get("steps"), list) else []
        if not 1 <= int(head) <= len(steps) or not isinstance(steps[int(head) - 1], dict):
            raise DataselError(f"--set {item!r}: {path} has no step {head} (it has {len(steps)})")
        steps[int(head) - 1][rest] = value
    else:
        config[key] = value
