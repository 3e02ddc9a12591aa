"""Training stages as plugins of the one engine: the registry and the contract.

A stage is one module of plain functions exposing `STAGE = Stage(...)`; `REGISTRY` maps its name to that
module (imported only when the stage runs). The engine knows nothing stage-specific:

- `build_model(cfg, tokenizer, model_config, weights_dir)` → the model to train (causal LM or a 1-label
  sequence classifier), before LoRA/freezing (applied by the run);
- `build_train_data(cfg, tokenizer, accelerator)` → this rank's data (any object; handed to `build_evals`,
  `derive_train` and `start`);
- `derive_train(cfg, data)` (optional) → `{train key: value}` the stage derives from its data (e.g. the steps
  that `train.num_training_epochs` hold); the run applies them to a copy of the config before it is saved
  and used (no stage changes the config it was given);
- `build_evals(cfg, tokenizer, accelerator, data)` → callables `(model, step) -> {metric: float}`;
- `section` (a `StageSection`, optional) → its config: the `<stage>:` section model, `check(cfg, fail)` run
  at config load (`fail(key, problem)` raises the ConfigError naming the key), keys it adds to data:/train:/
  eval:, and flags; `RunConfig` is assembled from the sections of this registry (`load_config` here);
- `start(cfg, ctx)` → after `accelerator.prepare`, a run object (`StageRun`) with:
    `next_step(n)`: the micro-batches of the next optimizer step (normally n; fewer means the data ended).
        A rollout stage may generate once and then hand out several optimisation passes.
    `loss(model, batch)`: `(loss_sum, stats)`: the SUM of per-item losses of one micro-batch and
        `{name: (sum, count)}` statistics; the engine logs `train/<name>` = Σsum / Σcount over the step's
        micro-batches and all processes (one all-reduce per step), averaged over the steps of a log interval.
        A statistic given as `(sum, sum of squares, count)` also logs `train/<name>_std` (population std
        over the step's items). Every micro-batch returns the same stat names.
    `loss_divisor(batch)` / `count_tokens(batch)`: what the step's summed loss is divided by (the loss of a
        step is Σloss_sum / Σloss_divisor over all processes: target tokens, pairs, ...) and input tokens
        (throughput);
    `state_dict()` / `load_state_dict(state)`: JSON-able state for exact resume (data position, rollout
        position, sampling generator);
    `can_save()`: whether a checkpoint may be written now (a rollout stage: only between rollouts);
    `report()`: `{metric: float}` logged with the training metrics (e.g. per-source shares);
    `saved_config()` (optional): `{field: value}` the checkpoint writes into the saved model's config.json
        (the reward model's score statistics).

Adding a stage = its file + one line in `REGISTRY`. `LoaderRun` is the run object of a stage that just
streams batches from a resumable loader; `lm_run` the one of a causal-LM stage (pretrain, SFT).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch

from llms_trainer import config
from llms_trainer.config import RunConfig, Stages, StageSection
from llms_trainer.data.packing import real_tokens
from llms_trainer.ops import lm_loss

Evaluator = Callable[[torch.nn.Module, int], dict[str, float]]
Stats = dict[str, tuple[Any, ...]]  # (sum, count) or (sum, sum of squares, count)

# name → module holding STAGE; config validation reads the names without importing anything heavy
REGISTRY: dict[str, str] = {
    "pretrain": "llms_trainer.train.stages.pretrain",
    "sft": "llms_trainer.train.stages.sft",
    "reward": "llms_trainer.train.stages.reward",
    "dpo": "llms_trainer.train.stages.dpo",
    "grpo": "llms_trainer.train.stages.grpo",
}


@dataclass
class StageContext:
    """What a stage's `start` receives after `accelerator.prepare`."""

    model: Any              # the prepared model (DDP / DeepSpeed engine): call it for the loss
    tokenizer: Any
    accelerator: Any
    data: Any               # what build_train_data returned
    model_config: str | None = None


class StageRun(Protocol):
    def next_step(self, n: int) -> list[dict]: ...
    def loss(self, model, batch: dict) -> tuple[torch.Tensor, Stats]: ...
    def loss_divisor(self, batch: dict) -> int: ...
    def count_tokens(self, batch: dict) -> int: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def can_save(self) -> bool: ...
    def report(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class Stage:
    name: str
    build_model: Callable[..., torch.nn.Module]
    build_train_data: Callable[[Any, Any, Any], Any]
    build_evals: Callable[[Any, Any, Any, Any], list[Evaluator]]
    start: Callable[[Any, StageContext], StageRun]
    section: StageSection = StageSection()
    derive_train: Callable[[Any, Any], dict[str, Any]] | None = None


class StageNotAvailable(ImportError):
    """A registered stage whose module is not present in this install."""


def get_stage(name: str) -> Stage:
    """The registered stage `name` (its module is imported now)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown stage '{name}'; stages: {', '.join(REGISTRY)}")
    try:
        module = importlib.import_module(REGISTRY[name])
    except ImportError as err:
        raise StageNotAvailable(f"the {name} stage cannot be imported ({err})") from err
    stage = getattr(module, "STAGE", None)
    if not isinstance(stage, Stage):
        raise StageNotAvailable(f"the {name} stage is not available in this install")
    return stage


def config_stages() -> Stages:
    """Every registered stage's config section, or why the stage cannot be imported here (its module is
    imported now)."""
    stages: dict[str, StageSection | str] = {}
    for name in REGISTRY:
        try:
            stages[name] = get_stage(name).section
        except StageNotAvailable as err:
            stages[name] = str(err)
    return stages


def load_config(path: str | Path, overrides: list[str] | None = None, **kwargs) -> RunConfig:
    """`llms_trainer.config.load_config` with this registry's stages (`check_files`, `check_data` as there)."""
    return config.load_config(path, overrides, stages=config_stages(), **kwargs)


class LoaderRun:
    """The run object of a stage that streams micro-batches from a resumable loader (pretrain, SFT, ...).

    `loss_fn(model, batch) -> (loss_sum, stats)`; the loader has `state_dict`, `load_state_dict`, `report`.
    """

    def __init__(self, loader, loss_fn: Callable, loss_divisor: Callable[[dict], int],
                 count_tokens: Callable[[dict], int]):
        self.loader, self.loss, self.loss_divisor, self.count_tokens = loader, loss_fn, loss_divisor, count_tokens
        self._batches: Iterator[dict] | None = None

    def next_step(self, n: int) -> list[dict]:
        if self._batches is None:
            self._batches = iter(self.loader)
        out = []
        for batch in self._batches:
            out.append(batch)
            if len(out) == n:
                break
        return out

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)

    def can_save(self) -> bool:
        return True

    def report(self) -> dict[str, float]:
        metrics = {}
        for source, row in self.loader.report().items():
            for key, value in row.items():
                if isinstance(value, (int, float)):
                    metrics[f"data/{source}/{key}"] = float(value)
        return metrics



def lm_run(cfg: Any, ctx: StageContext) -> LoaderRun:
    """The run of a causal-LM stage: `lm_loss` with train.loss_chunk_tokens and the LM head under the
    accelerator's autocast, split by source when the data names its sources (pretraining); divided by the
    target tokens."""
    sources = tuple(getattr(getattr(ctx.data, "dataset", None), "source_names", ()))
    loss = partial(lm_loss.lm_loss, sources=sources, chunk_tokens=cfg.train.loss_chunk_tokens,
                   autocast=ctx.accelerator.autocast)
    return LoaderRun(ctx.data, loss, lambda batch: lm_loss.target_tokens(batch), real_tokens)
