"""Embedding warm-up: the first `train.embedding_warmup_steps` optimizer steps train only the token embeddings.

After a vocabulary extension the new rows are guesses (see llms_trainer.model.embeddings) while the rest of
the model is trained. Chinese-LLaMA's recipe trains the embeddings alone first, then everything; here that is
one run and one schedule:

- steps [0, N): the input and output token embeddings (one matrix when tied) learn at
  `train.embedding_warmup_lr` (constant; default `train.lr`); every other parameter has learning rate 0;
- steps [N, num_training_steps): every parameter follows the run's schedule (`train.lr_scheduler_type`,
  `num_warmup_steps`, ...) as if the run started at step N and lasted num_training_steps - N steps.

Nothing about the optimizer changes at the switch: every parameter is in the optimizer (in its own param group
for the embeddings) from step 0 and gets gradients, and only the groups' learning rates, a function of (step,
config), change. So DDP buckets and DeepSpeed's partitions are never rebuilt, a resume on either side of the
switch is exact, and parameters at learning rate 0 stay bit-identical (AdamW's decay is lr × weight_decay).
Their Adam moments do follow their gradients during the warm-up, so the first full steps after it use moments
that have seen N steps; the global gradient norm that clipping uses includes their gradients. The cost of a
warm-up step is that of a full step.

With `train.embedding_warmup_rows_from` R (the old vocabulary size) only the rows R.. (the new tokens) train
during the warm-up: a gradient hook zeroes the other rows' gradients, so with weight decay 0 their Adam moments
stay 0 and they stay bit-identical too (the hook sees the full gradient on every backend: DDP and DeepSpeed
reduce it afterwards). The hooks are removed at the switch, and not registered when a run resumes after it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.hooks import RemovableHandle

from llms_trainer.config import ConfigError


def embedding_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The input and output token embedding weights (one when tied; a classifier has input embeddings only)."""
    found = []
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        weight = getattr(module, "weight", None)
        if weight is not None and weight.requires_grad and all(weight is not p for p in found):
            found.append(weight)
    if not found:
        raise ConfigError("key train.embedding_warmup_steps: this model has no trainable token embeddings")
    return found


def with_embedding_warmup(scheduler: torch.optim.lr_scheduler.LambdaLR, train) -> torch.optim.lr_scheduler.LambdaLR:
    """`scheduler` (built over num_training_steps - N steps) with the warm-up's factors: the first param group
    (the embeddings) at embedding_warmup_lr and the others at 0 before step N, then all on the schedule."""
    if train.embedding_warmup_steps:
        factor = (train.embedding_warmup_lr or train.lr) / train.lr
        embeddings, others = phase_lambdas(scheduler.lr_lambdas[0], train.embedding_warmup_steps, factor)
        scheduler.lr_lambdas = [embeddings] + [others] * (len(scheduler.lr_lambdas) - 1)
    return scheduler


def phase_lambdas(schedule: Callable[[int], float], warmup_steps: int,
                  warmup_factor: float) -> tuple[Callable[[int], float], Callable[[int], float]]:
    """(embedding group, other groups) factors of train.lr at a step: `warmup_factor` and 0 before
    `warmup_steps`, then `schedule(step - warmup_steps)` for both."""

    def embeddings(step: int) -> float:
        return warmup_factor if step < warmup_steps else schedule(step - warmup_steps)

    def others(step: int) -> float:
        return 0.0 if step < warmup_steps else schedule(step - warmup_steps)

    return embeddings, others


class NewRowsOnly:
    """Zeroes the gradient of embedding rows below `first_row` while `step < warmup_steps` (see the module
    docstring); call `update(step)` before every step."""

    def __init__(self, weights: list[torch.nn.Parameter], first_row: int | None, warmup_steps: int):
        self.weights, self.first_row, self.warmup_steps = weights, first_row, warmup_steps
        self.handles: list[RemovableHandle] = []

    def update(self, step: int) -> None:
        active = self.first_row is not None and step < self.warmup_steps
        if active and not self.handles:
            self.handles = [w.register_hook(self._mask) for w in self.weights]
        elif not active:
            for handle in self.handles:
                handle.remove()
            self.handles = []

    def _mask(self, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:self.first_row] = 0
        return grad
