"""Continued pretraining: packed token rows from the shard mixture, next-token loss, knowledge/NLL/generation evals."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from llms_trainer.config import EVAL_DATASET_KEY, RunConfig, dataset_files
from llms_trainer.data.mixing import load_policy, natural_weights
from llms_trainer.data.packing import IGNORE_INDEX
from llms_trainer.data.pipeline import PretrainData, PretrainSpec, ResumableLoader
from llms_trainer.data.shards import list_shards
from llms_trainer.train.stages import Evaluator, Stage


def build_train_data(cfg: RunConfig, tokenizer, accelerator) -> ResumableLoader:
    """This rank's micro-batches of `train.train_batch_size` rows (raises ShardError / PolicyError)."""
    d = cfg.data
    sources = {name: list_shards(pattern) for name, pattern in d.data.items()}
    weights = load_policy(d.sample_policy_file, list(sources)) if d.sample_policy_file else natural_weights(sources)
    spec = PretrainSpec(
        sources=sources, weights=weights, seq_length=d.seq_length, batch_size=cfg.train.train_batch_size,
        mode="concat" if d.concat_multiple_sequence else d.sequence_sample_mode, pad_to_max=d.pad_to_max,
        seed=cfg.train.seed, max_epochs=cfg.train.num_training_epochs, buffer_records=d.shuffle_buffer_records)
    data = PretrainData(spec, tokenizer, rank=accelerator.process_index, world_size=accelerator.num_processes)
    return ResumableLoader(data, num_workers=cfg.train.train_num_workers, prefetch_factor=cfg.train.prefetch_factor)


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Position t predicts labels[t + 1]; the last position predicts nothing."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def loss_sum(model, batch: dict) -> torch.Tensor:
    """Summed next-token cross-entropy over the labelled positions of a micro-batch (fp32 logits)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    targets = shifted_targets(batch["labels"])
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")


def count_items(batch: dict) -> int:
    """Target tokens of a micro-batch."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def count_tokens(batch: dict) -> int:
    """Real (non-pad) input tokens of a micro-batch."""
    return int(batch["attention_mask"].sum())


def build_evals(cfg: RunConfig, tokenizer, accelerator) -> list[Evaluator]:
    """One callable per eval method; the files are read now, so a bad record fails before training."""
    from llms_trainer.evaluation.generation import evaluate_generation, load_generation_prompts
    from llms_trainer.evaluation.nll import evaluate_nll, load_nll_texts
    from llms_trainer.evaluation.single_choice import evaluate_single_choice, load_single_choice

    e = cfg.eval
    evals: list[Evaluator] = []
    for method in e.methods():
        files = dataset_files(getattr(e, EVAL_DATASET_KEY[method]))
        if method == "single_choice_eval":
            questions = [q for path in files for q in load_single_choice(path)]
            evals.append(lambda model, step, qs=questions: evaluate_single_choice(
                model, tokenizer, qs, accelerator, few_shot_prefix=e.few_shot_prefix, batch_size=e.batch_size))
        elif method == "generation_eval":
            prompts = [p for path in files for p in load_generation_prompts(path)]
            save_dir = Path(e.generation_eval_save_path or Path(cfg.work_dir) / "generation_eval")
            evals.append(lambda model, step, ps=prompts, out=save_dir: evaluate_generation(
                model, tokenizer, ps, accelerator, max_new_tokens=e.max_new_tokens, save_dir=out, step=step,
                batch_size=e.batch_size))
        elif method == "nll_eval":
            texts = [t for path in files for t in load_nll_texts(path)]
            evals.append(lambda model, step, ts=texts: evaluate_nll(
                model, tokenizer, ts, accelerator, seq_length=cfg.data.seq_length, batch_size=e.batch_size))
    return evals


PRETRAIN = Stage(name="pretrain", build_train_data=build_train_data, loss_sum=loss_sum, count_items=count_items,
                 count_tokens=count_tokens, build_evals=build_evals)
