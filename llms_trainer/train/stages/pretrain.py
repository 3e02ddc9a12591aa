"""Continued pretraining: packed token rows from the shard mixture, next-token loss, knowledge/NLL/generation evals."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from functools import partial

import torch
from pydantic import Field

from llms_trainer.config import RunConfig, StageSection
from llms_trainer.data.mixing import load_policy, natural_weights
from llms_trainer.data.packing import IGNORE_INDEX, model_inputs, real_tokens  # noqa: F401 (model_inputs: LM stages)
from llms_trainer.data.pipeline import PretrainData, PretrainSpec, ResumableLoader
from llms_trainer.data.shards import list_shards
from llms_trainer.evaluation.methods import build_evaluators
from llms_trainer.evaluation.source_holdout import source_holdout_evaluators
from llms_trainer.model.load import build_causal_lm
from llms_trainer.train.lm_loss import (  # noqa: F401 (shifted_targets: for the other LM stages)
    Autocast,
    lm_loss_terms,
    shifted_targets,
)
from llms_trainer.train.stages import LoaderRun, Stage, StageContext


def build_train_data(cfg: RunConfig, tokenizer, accelerator) -> ResumableLoader:
    """This rank's micro-batches of `train.train_batch_size` rows (raises ShardError / PolicyError)."""
    d = cfg.data
    sources = {name: list_shards(pattern) for name, pattern in d.data.items()}
    weights = load_policy(d.sample_policy_file, list(sources)) if d.sample_policy_file else natural_weights(sources)
    spec = PretrainSpec(
        sources=sources, weights=weights, seq_length=d.seq_length, batch_size=cfg.train.train_batch_size,
        mode="concat" if d.concat_multiple_sequence else d.sequence_sample_mode, pad_to_max=d.pad_to_max,
        seed=cfg.train.seed, max_epochs=cfg.train.num_training_epochs, buffer_records=d.shuffle_buffer_records,
        document_attention=d.document_attention, holdout_records=cfg.eval.source_holdout_records,
        on_bad_record=d.on_bad_record)
    data = PretrainData(spec, tokenizer, rank=accelerator.process_index, world_size=accelerator.num_processes)
    return ResumableLoader(data, num_workers=cfg.train.train_num_workers, prefetch_factor=cfg.train.prefetch_factor)


def loss_terms(model, batch: dict, chunk_tokens: int = 0,
               autocast: Autocast = nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed next-token cross-entropy over the labelled positions of a micro-batch (fp32 logits), [B, T] its
    per-position terms, detached), the LM head applied to `chunk_tokens` labelled positions at a time (0: the
    model's full logits; see lm_loss)."""
    return lm_loss_terms(model, batch, chunk_tokens, autocast)


def loss_sum(model, batch: dict, chunk_tokens: int = 0, autocast: Autocast = nullcontext) -> torch.Tensor:
    """The summed next-token cross-entropy of `loss_terms`."""
    return loss_terms(model, batch, chunk_tokens, autocast)[0]


def lm_loss(model, batch: dict, sources: tuple[str, ...] = (), **options) -> tuple[torch.Tensor, dict]:
    """(summed next-token loss, statistics): the loss of every causal-LM stage (`options`: loss_sum's).

    With `sources` (names in data order) and a batch carrying `source_ids`, the statistics split the same
    per-token losses by the source of each target token: `source/<name>/loss` (nats per target token) and
    `source/<name>/token_share` (its share of the step's target tokens); their token-weighted mean is the loss.
    """
    if not sources or "source_ids" not in batch:
        return loss_sum(model, batch, **options), {}
    total, per_token = loss_terms(model, batch, **options)
    return total, source_stats(per_token, batch, sources)


def source_stats(per_token: torch.Tensor, batch: dict, sources: tuple[str, ...]) -> dict:
    """{source/<name>/loss: (Σ loss, targets), source/<name>/token_share: (targets, all targets)} of a batch."""
    targets = shifted_targets(batch["labels"]) != IGNORE_INDEX
    owner = shifted_targets(batch["source_ids"]).masked_fill(~targets, -1)
    losses = torch.zeros(len(sources), dtype=torch.float64, device=per_token.device)
    losses.index_add_(0, owner[targets], per_token[targets].double())
    counts = torch.bincount(owner[targets], minlength=len(sources)).double()
    every = counts.sum()
    stats = {}
    for i, name in enumerate(sources):
        stats[f"source/{name}/loss"] = (losses[i], counts[i])
        stats[f"source/{name}/token_share"] = (counts[i], every)
    return stats


def lm_loss_for(cfg: RunConfig, ctx: StageContext) -> Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]:
    """`lm_loss` as this run computes it: train.loss_chunk_tokens, the LM head under the accelerator's autocast,
    the per-source split when the data names its sources (pretraining)."""
    sources = tuple(getattr(getattr(ctx.data, "dataset", None), "source_names", ()))
    return partial(lm_loss, sources=sources, chunk_tokens=cfg.train.loss_chunk_tokens,
                   autocast=ctx.accelerator.autocast)


def count_items(batch: dict) -> int:
    """Target tokens of a micro-batch."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def count_tokens(batch: dict) -> int:
    """Real (non-pad) input tokens of a micro-batch (padded or packed rows)."""
    return real_tokens(batch)


def build_evals(cfg: RunConfig, tokenizer, accelerator):
    """One callable per eval method, and the held-out loss per source (eval.source_holdout_records); the files
    are read now, so a bad record fails before training."""
    return build_evaluators(cfg, tokenizer, accelerator) + source_holdout_evaluators(cfg, tokenizer, accelerator)


def start(cfg: RunConfig, ctx: StageContext) -> LoaderRun:
    return LoaderRun(ctx.data, lm_loss_for(cfg, ctx), count_items, count_tokens)


# a key of eval: read by this stage only
SHARED_KEYS = {"eval": {"source_holdout_records": (int, Field(
    0, ge=0, description="pretraining: the last N records of every source (manifest order) never train; with "
    "train_and_eval their nats per character and per token are logged as eval/source/<name>/... every "
    "eval_interval; 0: off"))}}
SECTION = StageSection(shared_keys=SHARED_KEYS, foreign="holds out pretraining records", reads_sources=True,
                       evaluates=lambda cfg: bool(cfg.eval.source_holdout_records))
STAGE = Stage(name="pretrain", build_model=build_causal_lm, build_train_data=build_train_data,
              build_evals=build_evals, start=start, section=SECTION)
