"""Pipelines: a list of stages, each writing its own step folder, from Python or a YAML config.

    input: datasel:sample          # a path, a glob, or the bundled sample
    output: out/quickstart
    steps:
      - stage: dedup
        threshold: 0.8

Step `i` reads step `i-1`'s kept rows and writes `<output>/<ii>-<stage>/`; the last step's folder
is the selected dataset. A rerun skips finished steps (same parameters and inputs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from datasel.engine import RunOptions, run
from datasel.errors import DataselError
from datasel.stage import STAGES, Stage

CONFIG_KEYS = {"input", "output", "steps", "text_column", "id_column", "workers", "description"}


def resolve_input(src: str | os.PathLike) -> str:
    """`datasel:sample` names the bundled sample; anything else is a path or glob."""
    from datasel import SAMPLE

    return str(SAMPLE) if str(src) == "datasel:sample" else str(src)


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

    def step_dirs(self, dst: Path) -> list[Path]:
        return [dst / f"{i + 1:02d}-{s.name}" for i, s in enumerate(self.steps)]

    def run(self, src, dst, **options) -> list[dict]:
        opts = RunOptions(**{**self.options.__dict__, **options})
        dst = Path(dst)
        manifests, current = [], resolve_input(src)
        for stage, step_dir in zip(self.steps, self.step_dirs(dst), strict=True):
            manifests.append(run(stage, current, step_dir, opts))
            current = str(step_dir)
        return manifests


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> tuple[Pipeline, dict]:
    """Read a YAML pipeline; `overrides` are `key=value` (top level) or `N.key=value` (step N, from 1)."""
    path = Path(path)
    if not path.exists():
        raise DataselError(f"{path}: no such config file")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataselError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
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
    stages = []
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
        stages.append(STAGES[name].from_params(params, f"{where} ({name})"))
    options = RunOptions(
        **{k: config[k] for k in ("text_column", "id_column", "workers") if k in config}
    )
    return Pipeline(stages, options), config


def _apply_override(config: dict, item: str, path: Path) -> None:
    if "=" not in item:
        raise DataselError(f"--set {item!r}: expected key=value or STEP.key=value")
    key, value = item.split("=", 1)
    value = yaml.safe_load(value)
    head, _, rest = key.partition(".")
    if rest and head.isdigit():
        steps = config.get("steps") or []
        if not 1 <= int(head) <= len(steps):
            raise DataselError(f"--set {item!r}: {path} has {len(steps)} steps")
        steps[int(head) - 1][rest] = value
    else:
        config[key] = value
