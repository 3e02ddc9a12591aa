"""Continued pretraining: packed token rows from the shard mixture, next-token loss, knowledge/NLL/generation evals."""

from __future__ import annotations

from pydantic import Field

from llms_trainer.config import RunConfig, StageSection
from llms_trainer.data.mixing import load_policy, natural_weights
from llms_trainer.data.pipeline import PretrainData, PretrainSpec, ResumableLoader
from llms_trainer.data.shards import list_shards
from llms_trainer.evaluation.methods import build_evaluators
from llms_trainer.evaluation.source_holdout import source_holdout_evaluators
from llms_trainer.model.load import build_causal_lm
from llms_trainer.train.stages import LoaderRun, Stage, StageContext, lm_run


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


def build_evals(cfg: RunConfig, tokenizer, accelerator, data):
    """One callable per eval method, and the held-out loss per source (eval.source_holdout_records); the files
    are read now, so a bad record fails before training."""
    return build_evaluators(cfg, tokenizer, accelerator) + source_holdout_evaluators(cfg, tokenizer, accelerator)


def start(cfg: RunConfig, ctx: StageContext) -> LoaderRun:
    return lm_run(cfg, ctx)


# a key of eval: read by this stage only
SHARED_KEYS = {"eval": {"source_holdout_records": (int, Field(
    0, ge=0, description="pretraining: the last N records of every source (manifest order) never train; with "
    "train_and_eval their nats per character and per token are logged as eval/source/<name>/... every "
    "eval_interval; 0: off"))}}
SECTION = StageSection(shared_keys=SHARED_KEYS, foreign="holds out pretraining records", reads_sources=True,
                       evaluates=lambda cfg: bool(cfg.eval.source_holdout_records))
STAGE = Stage(name="pretrain", build_model=build_causal_lm, build_train_data=build_train_data,
              build_evals=build_evals, start=start, section=SECTION)
