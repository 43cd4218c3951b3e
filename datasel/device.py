"""torch, imported where a stage needs it, and the device it runs on: the one place for both."""

from __future__ import annotations

from typing import Any

from datasel.errors import DataselError, import_extra

DEVICES = ("auto", "cpu", "cuda")  # and cuda:N


def check_device(device: str) -> None:
    """A ValueError for a device a stage's --device does not take."""
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")


def import_torch(what: str, extra: str = "lm") -> Any:
    """The torch module, or a one-line error naming the extra that brings it (`what` says who
    needs it: "score ppl needs torch, not installed: pip install 'datasel[lm]'")."""
    return import_extra("torch", extra, what)


def pick_device(device: Any, what: str, extra: str = "lm") -> Any:
    """`device` as torch takes it: "auto" is "cuda" when torch sees a GPU, else "cpu"; a CUDA
    device where torch sees none is a one-line error. Other names (and torch.device objects)
    pass through."""
    torch = import_torch(what, extra)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise DataselError(f"--device {device}: torch sees no CUDA device here")
    return device
