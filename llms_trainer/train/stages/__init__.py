"""Training stages: each says how to build its batches, its loss and its evals; the engine does the rest.

A stage is a `Stage` value holding plain functions (no base classes):

- `build_train_data(cfg, tokenizer, accelerator)` → a loader: iterable of micro-batches (dicts of tensors)
  for this rank with `state_dict()` / `load_state_dict()` (exact resume) and `report()` (per-source shares);
- `loss_sum(model, batch)` → the SUM of per-item losses of one micro-batch (a 0-dim tensor);
- `count_items(batch)` → how many items that sum covers (target tokens for language modelling), so the
  engine can average over the whole optimizer step on every rank (accumulation- and DDP-invariant);
- `count_tokens(batch)` → input tokens (throughput);
- `build_evals(cfg, tokenizer, accelerator)` → callables `(model, step) -> {metric: float}`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Evaluator = Callable[[torch.nn.Module, int], dict[str, float]]


@dataclass(frozen=True)
class Stage:
    name: str
    build_train_data: Callable[[Any, Any, Any], Any]
    loss_sum: Callable[[torch.nn.Module, dict], torch.Tensor]
    count_items: Callable[[dict], int]
    count_tokens: Callable[[dict], int]
    build_evals: Callable[[Any, Any, Any], list[Evaluator]]
