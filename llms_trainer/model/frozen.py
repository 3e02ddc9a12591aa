"""Frozen models a stage only evaluates (DPO/GRPO reference, GRPO reward model), for every backend.

`prepare_frozen` puts a model in eval mode with no gradients and no optimizer state. One process, DDP and
ZeRO-1/2: the model is simply moved to the device (nothing to synchronise: it never trains). ZeRO-3: it
gets its own DeepSpeed engine without an optimizer, so its parameters are partitioned like the policy's
and gathered layer by layer in forward. Under LoRA the reference needs no copy at all: `adapters_disabled`
runs the policy itself with its adapters switched off.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from llms_trainer.io import zero_stage


def prepare_frozen(model: torch.nn.Module, accelerator) -> torch.nn.Module:
    """`model` ready to be evaluated next to the trained one: eval mode, requires_grad False, placed/sharded."""
    model.eval()
    model.requires_grad_(False)
    if zero_stage(accelerator) != 3:
        return model.to(accelerator.device)
    import deepspeed

    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    config = {"train_micro_batch_size_per_gpu": ds.get("train_micro_batch_size_per_gpu", 1),
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "bf16": ds.get("bf16", {"enabled": False}), "fp16": ds.get("fp16", {"enabled": False})}
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


@contextmanager
def adapters_disabled(model: torch.nn.Module, accelerator) -> Iterator[torch.nn.Module]:
    """The LoRA policy with its adapters switched off: the frozen starting model, without a copy."""
    unwrapped = accelerator.unwrap_model(model)
    if not hasattr(unwrapped, "disable_adapter"):
        raise ValueError("adapters_disabled needs a LoRA (peft) model; use prepare_frozen for a separate copy")
    with unwrapped.disable_adapter(), torch.no_grad():
        yield model
