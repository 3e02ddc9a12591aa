"""Instruction tuning (SFT): chat records from shards, labels on assistant replies only, packed conversations.

Data: `llms_trainer.data.sft` (every record format, labels by construction from the chat format, role tokens
typed in messages kept as text, truncation by whole turns, best-fit-decreasing packing with attention kept
inside each conversation). Loss: the causal-LM loss of pretraining over the labelled tokens. The model's
`generation_config.eos_token_id` gains `<|endofchat|>`, so plain `generate` on a checkpoint stops at the end
of a reply. Evals: the registry's methods, with generation prompts rendered through the chat format.
"""

from __future__ import annotations

from llms_trainer.config import ConfigError, RunConfig, Section, StageSection
from llms_trainer.data.mixing import load_policy, natural_weights
from llms_trainer.data.sft import ChatTokenizerError, SFTSpec, build_sft_loader
from llms_trainer.data.shards import list_shards
from llms_trainer.evaluation.methods import build_evaluators
from llms_trainer.model.load import build_chat_lm
from llms_trainer.train.stages import LoaderRun, Stage, StageContext, lm_run


def build_train_data(cfg: RunConfig, tokenizer, accelerator):
    """This rank's SFT micro-batches (raises ShardError / PolicyError; ConfigError for a non-chat tokenizer)."""
    d = cfg.data
    sources = {name: list_shards(pattern) for name, pattern in d.data.items()}
    weights = load_policy(d.sample_policy_file, list(sources)) if d.sample_policy_file else natural_weights(sources)
    spec = SFTSpec(sources=sources, weights=weights, seq_length=d.seq_length, batch_size=cfg.train.train_batch_size,
                   pack=d.concat_multiple_sequence, pad_to_max=d.pad_to_max, seed=cfg.train.seed,
                   max_epochs=cfg.train.num_training_epochs, buffer_records=d.shuffle_buffer_records,
                   pack_buffer_conversations=d.pack_buffer_conversations, on_bad_record=d.on_bad_record)
    try:
        return build_sft_loader(spec, tokenizer, rank=accelerator.process_index, world_size=accelerator.num_processes,
                                num_workers=cfg.train.train_num_workers, prefetch_factor=cfg.train.prefetch_factor)
    except ChatTokenizerError as err:
        raise ConfigError(f"key data.tokenizer_path: {err}") from err


def build_evals(cfg: RunConfig, tokenizer, accelerator, data):
    return build_evaluators(cfg, tokenizer, accelerator)


def start(cfg: RunConfig, ctx: StageContext) -> LoaderRun:
    return lm_run(cfg, ctx)


class SFTConfig(Section):
    """sft: section (stage sft; its data keys live in data:)."""


STAGE = Stage(name="sft", build_model=build_chat_lm, build_train_data=build_train_data, build_evals=build_evals,
              start=start, section=StageSection(model=SFTConfig, reads_sources=True, chat=True))
