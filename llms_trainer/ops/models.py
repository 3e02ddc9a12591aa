"""The model inside its wrappers, eval mode, and whether parameters are ZeRO-3 partitions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def unwrapped(model: torch.nn.Module, peft: bool = False) -> torch.nn.Module:
    """The model inside DDP / DeepSpeed engines and torch.compile wrappers; with `peft` also inside a peft
    wrapper (the transformers model), else a peft model stays peft."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        else:
            break
    return model.get_base_model() if peft and hasattr(model, "get_base_model") else model


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """model.eval() and torch.no_grad() inside; every submodule's train/eval flag restored on exit."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def is_zero3(accelerator: Any) -> bool:
    """True under DeepSpeed ZeRO stage 3 (parameters sharded: all ranks must run every forward together)."""
    from llms_trainer.io import zero_stage

    return zero_stage(accelerator) == 3
