"""The frozen reference of DPO and GRPO: a separate frozen copy of the starting model, or under LoRA the
policy itself with its adapters switched off (no copy)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from llms_trainer.model.frozen import adapters_disabled, prepare_frozen
from llms_trainer.model.load import build_causal_lm, zero3_init_as_configured
from llms_trainer.ops.models import eval_mode


@contextmanager
def reference_of(model: torch.nn.Module, reference: torch.nn.Module | None, accelerator: Any
                 ) -> Iterator[torch.nn.Module]:
    """The frozen reference to score with: the separate model, or the LoRA policy with adapters off."""
    if reference is not None:
        with torch.no_grad():
            yield reference
    else:
        with adapters_disabled(model, accelerator) as policy, eval_mode(policy):
            yield policy


def build_reference(cfg: Any, tokenizer: Any, accelerator: Any, model_config: str | None = None):
    """The frozen starting model (None under LoRA: the policy with adapters disabled is the reference)."""
    if cfg.train.use_lora:
        return None
    with zero3_init_as_configured(accelerator):
        model = build_causal_lm(cfg, tokenizer, model_config)
    return prepare_frozen(model, accelerator)
