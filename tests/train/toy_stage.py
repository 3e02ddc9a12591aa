"""A test-only stage: 3 optimizer steps per "rollout", a custom statistic, a frozen reference model.

Each rollout draws one step's micro-batches from the pretraining loader and trains on them for 3 optimizer
steps; checkpoints are allowed only between rollouts. Statistics per micro-batch j (0-based) on rank r:
`toy` = ((r+1)·(j+1)², j+1), so the engine's step value Σsum/Σcount tells a correct reduction over
accumulation and processes apart from a mean of means; `ref_drift` = how far the frozen reference moved
(must stay 0) and `ref_grads` = reference parameters holding a gradient (must stay 0).
"""

from __future__ import annotations

import os
import sys

import torch
from pydantic import Field

from llms_trainer.config import Section, StageSection
from llms_trainer.data.packing import real_tokens
from llms_trainer.model.frozen import prepare_frozen
from llms_trainer.model.load import build_causal_lm
from llms_trainer.ops.lm_loss import lm_loss, target_tokens
from llms_trainer.train.stages import REGISTRY, Stage, StageContext, pretrain

PASSES = 3


class ToyRun:
    def __init__(self, ctx: StageContext, reference):
        self.ctx, self.reference = ctx, reference
        self.initial = [p.detach().clone() for p in reference.parameters()]
        self.rollout: list[dict] = []
        self.passes_left = 0
        self.loader_state_at_rollout = ctx.data.state_dict()
        self.batches = None
        self.micro = 0

    def _draw(self, n: int) -> list[dict]:
        if self.batches is None:
            self.batches = iter(self.ctx.data)
        out = []
        for batch in self.batches:
            out.append(batch)
            if len(out) == n:
                break
        return out

    def next_step(self, n: int) -> list[dict]:
        if self.passes_left == 0:
            self.loader_state_at_rollout = self.ctx.data.state_dict()
            self.rollout, self.passes_left = self._draw(n), PASSES
        self.passes_left -= 1
        self.micro = 0
        return self.rollout

    def loss(self, model, batch):
        loss, _ = lm_loss(model, batch)
        with torch.no_grad():
            self.reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        rank, j = self.ctx.accelerator.process_index, self.micro
        self.micro += 1
        drift = sum(float((p.detach() - q).abs().sum()) for p, q in zip(self.reference.parameters(), self.initial,
                                                                            strict=True))
        grads = sum(p.grad is not None for p in self.reference.parameters())
        return loss, {"toy": ((rank + 1) * (j + 1) ** 2, j + 1), "ref_drift": (drift, 1), "ref_grads": (grads, 1)}

    loss_divisor = staticmethod(target_tokens)
    count_tokens = staticmethod(real_tokens)

    def state_dict(self) -> dict:
        """Between rollouts: where the next rollout starts; mid-rollout: where this one started."""
        loader = self.ctx.data.state_dict() if self.passes_left == 0 else self.loader_state_at_rollout
        return {"loader": loader, "passes_left": self.passes_left}

    def load_state_dict(self, state: dict) -> None:
        self.ctx.data.load_state_dict(state["loader"])
        self.batches = None
        self.passes_left = state["passes_left"]
        self.loader_state_at_rollout = state["loader"]
        if self.passes_left:  # re-draw the rollout in progress (checkpoints come between rollouts, so rarely)
            self.rollout = self._draw(len(self.rollout) or 1)

    def can_save(self) -> bool:
        return self.passes_left == 0

    def report(self) -> dict:
        return {}


def start(cfg, ctx: StageContext) -> ToyRun:
    reference = prepare_frozen(build_causal_lm(cfg, ctx.tokenizer, ctx.model_config), ctx.accelerator)
    return ToyRun(ctx, reference)


class ToyConfig(Section):
    """toy: section (declared here only: config code knows nothing of it)."""

    passes: int = Field(PASSES, ge=1, description="optimizer steps per rollout")


def check_config(cfg, fail) -> None:
    if cfg.toy is not None and cfg.toy.passes > cfg.train.num_training_steps:
        fail("toy.passes", f"{cfg.toy.passes} exceeds train.num_training_steps {cfg.train.num_training_steps}")


STAGE = Stage(name="toy", build_model=build_causal_lm, build_train_data=pretrain.build_train_data,
              build_evals=lambda *args: [], start=start,
              section=StageSection(model=ToyConfig, check=check_config, reads_sources=True))


def register() -> None:
    REGISTRY["toy"] = __name__


if __name__ == "__main__":  # launched by accelerate: register, then the usual entry point
    register()
    sys.path.insert(0, os.getcwd())
    import train_llms

    sys.exit(train_llms.main(sys.argv[1:]))
