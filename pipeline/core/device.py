"""Where the torch models run: `device: auto | cpu | cuda | cuda:N` (SPEC section 10).

A component with a torch model (two-tower, COBRA, MTGR) takes a `device` parameter and runs its
public methods (fit, retrieve, score, ...) under `on_device`. On a GPU, `torch.device` is entered
as a context, so every tensor a factory makes (zeros, arange, the model's parameters) is made on
it; arrays coming from numpy go through `tensor()` and results leave through `numpy()`. On the CPU
no context is entered at all, so the CPU path is the plain one (no per-call overhead, the same
numbers to the last bit). `auto` picks the first GPU when torch sees one, else the CPU.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, TypeVar

import numpy as np
import torch

CPU = torch.device("cpu")
F = TypeVar("F", bound=Callable[..., Any])


def resolve(name: str | None) -> torch.device:
    """The torch device `name` names; a clear error when it is not there."""
    text = "cpu" if name is None else str(name).strip().lower()
    if text == "cpu":
        return CPU
    if text == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else CPU
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(f"device '{name}': torch {torch.__version__} ({build}) sees no GPU; "
                             "use device: cpu, or auto to take a GPU only where there is one")
        index = int(text[5:]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device '{name}': only {torch.cuda.device_count()} GPU(s) visible")
        return torch.device("cuda", index)
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


def placed(device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which torch factories make tensors on `device` (nothing at all on the CPU)."""
    return contextlib.nullcontext() if device.type == "cpu" else torch.device(device)


def on_device(method: F) -> F:
    """Run a component method under `placed(self.device_)`; `self.device_` is resolved from
    `self.device` on first use (so a loaded component resolves on the machine that loads it)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        device = getattr(self, "device_", None)
        if device is None:
            device = self.device_ = resolve(getattr(self, "device", "cpu"))
        with placed(device):
            return method(self, *args, **kwargs)

    return run  # type: ignore[return-value]


def current() -> torch.device:
    """The device tensors are made on here (the CPU outside `placed`)."""
    return torch.get_default_device()


def tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """`array` as a tensor on the current device (shares memory on the CPU, like from_numpy)."""
    return torch.as_tensor(array, device=current())


def numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as a numpy array, from whatever device it is on."""
    return t.detach().cpu().numpy()


def generator(seed: int) -> torch.Generator:
    """A seeded torch generator on the current device (random ops need theirs on their device)."""
    return torch.Generator(device=current()).manual_seed(seed)
