"""How a step's input is cut into units, once: the cut of the first attempt is saved in the
step folder's plan, and a resumed run keeps it whatever `--workers` says now."""

from __future__ import annotations

from typing import TYPE_CHECKING

from datasel.io import Columns, Unit, cut_rows, input_bytes, plan_units, unit_dict, write_json
from datasel.stage import Context, Stage
from datasel.step_folder import StepFolder

if TYPE_CHECKING:
    from datasel.options import RunOptions

# With several workers, units are cut to about a quarter of each worker's share of the input, so
# that uneven files keep every worker busy to the end, but not below this (each unit costs ~10 ms
# and a shard). A Parquet row group is cut only past a whole worker's share: a unit that starts
# inside a row group decodes the rows before it (dedup with 2 workers ran ~10% faster so).
MIN_UNIT_BYTES = 8 << 20

# A model stage's units hold about `unit_seconds` of work by a cost model, not a measured speed,
# so that the same input is cut into the same units on every run, whatever the load: a forward
# pass costs ~2 FLOPs per parameter per token, at ~0.3 tokens per input byte (BPE on prose), on
# a device that sustains about this many FLOP/s (conservative: a kill loses less, not more).
SUSTAINED_FLOPS = {"cpu": 5e10, "cuda": 2e14}
TOKENS_PER_BYTE = 0.3


def step_units(
    stage: Stage, src, folder: StepFolder, head: dict, options: RunOptions, columns: Columns
) -> tuple[list[Unit], list[Unit] | None]:
    """(the units of this step, the units a sample reads when they differ), as the plan saved
    in `folder` has them, else cut now and saved there with `head` (the run's plan and key)."""
    saved = folder.read_plan()
    if saved:
        units = [Unit(**u) for u in saved["units"]]
    else:
        shard_bytes, cut_bytes = unit_bytes(src, stage, options)
        units = plan_units(
            src, shard_bytes=shard_bytes, shard_rows=options.shard_rows, cut_bytes=cut_bytes
        )
    folder.work.mkdir(parents=True, exist_ok=True)
    _save_plan(folder, {**saved, **head}, units)  # saved: what a resume must keep
    # the units of a model stage are cut once, from its model's size, before any work
    if stage.needs.cut_by_model_size and "unit_bytes" not in saved:
        probe = Context(
            columns=columns, work=folder.work, key=head["key"], units=units, quiet=options.quiet
        )
        bytes_of_work = unit_bytes_of_work(bytes_per_second(stage, probe), options.unit_seconds)
        saved = {"sample_units": [unit_dict(u) for u in units], "unit_bytes": bytes_of_work}
        units = cut_rows(units, bytes_of_work)
        _save_plan(folder, {**saved, **head}, units)
    return units, [Unit(**u) for u in saved.get("sample_units", [])] or None


def _save_plan(folder: StepFolder, head: dict, units: list[Unit]) -> None:
    write_json({**head, "units": [unit_dict(u) for u in units]}, folder.plan)


def unit_bytes(src, stage: Stage, options: RunOptions) -> tuple[int, int]:
    """(unit bytes, bytes above which a Parquet row group is cut into row ranges)."""
    if stage.needs.single_process or options.workers <= 1:
        return options.shard_bytes, options.shard_bytes
    total = input_bytes(src)
    quarter = min(options.shard_bytes, max(MIN_UNIT_BYTES, total // (4 * options.workers)))
    # rounded up: a file that is all the input must make `workers` pieces, not one more
    share = min(options.shard_bytes, max(MIN_UNIT_BYTES, -(-total // options.workers)))
    return quarter, share


def bytes_per_second(stage: Stage, ctx: Context) -> float:
    """Input bytes (Arrow) per second that `stage.map` is estimated to process."""
    parameters, device = stage.model_size(ctx)
    flops = SUSTAINED_FLOPS["cuda" if device.startswith("cuda") else "cpu"]
    return flops / (2 * max(parameters, 1) * TOKENS_PER_BYTE)


def unit_bytes_of_work(bytes_per_second: float, seconds: float) -> int:
    work = max(1, int(bytes_per_second * seconds))
    return 1 << (work.bit_length() - 1)
