"""Reward-model evaluation: pair accuracy per file, score deltas, and `score_pairs` (what RL scores with).

For each file of eval.test_reward_model_acc_files (`{name: path}`, a list or one path; unnamed files are
named by their stem), with delta = s_chosen - s_rejected:

    eval/reward/<name>/accuracy     share of pairs with delta > 0 (a tie counts as wrong)
    eval/reward/<name>/delta_mean   mean and (population) std of delta
    eval/reward/<name>/delta_std
    eval/reward/accuracy            over the pairs of all files
    eval/reward/reward_mean         mean and std of every score (chosen and rejected) of all files; also set as
    eval/reward/reward_std          `reward_mean` / `reward_std` on the model config, so the next checkpoint's
                                    config.json carries them for RL to normalise rewards

Each eval draws the delta histogram of every file (and, greyed, of the first eval) into
`work_dir/reward_eval/delta_hist_step<n>.png`; with eval.save_delta_scores the deltas are written to
`<eval.delta_scores_save_path or work_dir/delta_scores>/step_<n>.json` as {"step", "deltas": {name: [...]}}.
Pairs are encoded as in training (llms_trainer.data.pairs), split across processes and gathered once.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import torch

from llms_trainer.data.pairs import PairDataError, encode_sequences, input_files, pad_rows, read_pairs
from llms_trainer.data.pipeline import pad_id_of
from llms_trainer.evaluation import (
    EvalDataError,
    batches,
    eval_mode,
    gather_results,
    merge_results,
    rank_share,
)
from llms_trainer.train.stages.reward import base_model, sequence_scores

Row = list[int]


def named_files(value: str | list[str] | dict[str, str]) -> dict[str, str]:
    """{name: path} of an eval dataset key; files of a list are named by their stem (made unique)."""
    if isinstance(value, dict):
        return {str(name): path for name, path in value.items()}
    named: dict[str, str] = {}
    for path in input_files(value):
        name = Path(path).name.split(".")[0]
        while name in named:
            name += "_"
        named[name] = path
    return named


def load_eval_pairs(tokenizer, path: str, seq_length: int) -> list[tuple[Row, Row]]:
    """(chosen ids, rejected ids) of every pair of a held-out file; a bad line is an EvalDataError."""
    try:
        pairs, _ = read_pairs([path], on_bad_record="error")
        prompts = [p.prompt for p in pairs]
        chosen = encode_sequences(tokenizer, prompts, [p.selected for p in pairs], seq_length)
        rejected = encode_sequences(tokenizer, prompts, [p.rejected for p in pairs], seq_length)
    except PairDataError as err:
        raise EvalDataError(f"{err}; fix the held-out file") from None
    return list(zip(chosen, rejected, strict=True))


def _device(model: torch.nn.Module, accelerator: Any) -> torch.device:
    return accelerator.device if accelerator is not None else next(model.parameters()).device


def score_rows(model: torch.nn.Module, rows: list[Row], fill: int, device) -> list[float]:
    """Scores of token rows in one forward (rows padded on the right; no grad)."""
    batch = pad_rows(rows, fill)
    return sequence_scores(model, batch["input_ids"].to(device), batch["attention_mask"].to(device)).tolist()


def _scored_in_shares(model, items: list, rows_of, fill: int, batch_size: int, accelerator) -> list:
    """Per item, the scores of its rows (`rows_of(item)` → rows), split across processes and gathered once."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    share = rank_share(items, rank, world)
    local = []
    with eval_mode(model):
        for batch in batches(share, batch_size):
            groups = [rows_of(item) for _, item in batch]
            scores = score_rows(model, [row for group in groups for row in group], fill, _device(model, accelerator))
            width = len(groups[0])
            per_item = [scores[i * width:(i + 1) * width] for i in range(len(groups))]
            local += [(index, result) for (index, _), result in zip(batch, per_item, strict=True)]
    return merge_results(gather_results(accelerator, local) if accelerator is not None else local)


def score_pairs(model: torch.nn.Module, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 8,
                accelerator: Any = None, seq_length: int | None = None) -> list[float]:
    """The reward of each (prompt, response), encoded as in training; batched, no grad.

    Without `accelerator` this process scores every pair on the model's device. With it the pairs are split
    across processes and every process returns all scores (all processes must call it, with the same pairs).
    `seq_length` defaults to the one the model was trained with (config `reward_seq_length`), else to its
    max_position_embeddings.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        return []
    config = base_model(model).config
    if getattr(config, "pad_token_id", None) is None:  # transformers refuses batches without one (never read here)
        config.pad_token_id = pad_id_of(tokenizer)
    length = (seq_length or getattr(config, "reward_seq_length", None)
              or getattr(config, "max_position_embeddings", None) or 2048)
    rows = encode_sequences(tokenizer, list(prompts), list(responses), length)
    scores = _scored_in_shares(model, rows, lambda row: [row], pad_id_of(tokenizer), batch_size, accelerator)
    return [s[0] for s in scores]


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


class RewardEvaluator:
    """The engine's evaluator `(model, step) -> metrics` for the reward stage (call on every process)."""

    def __init__(self, sets: dict[str, list[tuple[Row, Row]]], fill: int, accelerator, batch_size: int,
                 plot_dir: Path, delta_dir: Path | None):
        self.sets, self.fill, self.accelerator, self.batch_size = sets, fill, accelerator, batch_size
        self.plot_dir, self.delta_dir = plot_dir, delta_dir
        self.first: tuple[int, list[float]] | None = None  # (step, deltas) of the first eval

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        items = [(name, pair) for name, pairs in self.sets.items() for pair in pairs]
        scores = _scored_in_shares(model, items, lambda item: list(item[1]), self.fill, self.batch_size,
                                   self.accelerator)
        deltas: dict[str, list[float]] = {name: [] for name in self.sets}
        for (name, _), (chosen, rejected) in zip(items, scores, strict=True):
            deltas[name].append(chosen - rejected)
        metrics = {}
        for name, values in deltas.items():
            metrics[f"eval/reward/{name}/accuracy"] = sum(d > 0 for d in values) / len(values)
            metrics[f"eval/reward/{name}/delta_mean"], metrics[f"eval/reward/{name}/delta_std"] = _mean_std(values)
        every = [d for values in deltas.values() for d in values]
        metrics["eval/reward/accuracy"] = sum(d > 0 for d in every) / len(every)
        mean, std = _mean_std([s for pair in scores for s in pair])
        metrics["eval/reward/reward_mean"], metrics["eval/reward/reward_std"] = mean, std
        config = base_model(model).config
        config.reward_mean, config.reward_std = mean, std
        if self.first is None:
            self.first = (step, every)
        if self.accelerator is None or self.accelerator.is_main_process:
            self._write(step, deltas)
        return metrics

    def _write(self, step: int, deltas: dict[str, list[float]]) -> None:
        from llms_trainer.metrics import atomic_write

        atomic_write(self.plot_dir / f"delta_hist_step{step}.png", delta_histogram(deltas, step, self.first))
        if self.delta_dir is not None:
            text = json.dumps({"step": step, "deltas": deltas}, ensure_ascii=False)
            atomic_write(self.delta_dir / f"step_{step}.json", text.encode("utf-8"))


def delta_histogram(deltas: dict[str, list[float]], step: int, first: tuple[int, list[float]] | None) -> bytes:
    """PNG bytes: one histogram of s_chosen - s_rejected per file, the first eval's (all files) greyed."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), layout="constrained")
    ax = figure.subplots()
    if first is not None and first[0] != step:
        ax.hist(first[1], bins=40, color="grey", alpha=0.35, label=f"first eval (step {first[0]})")
    for name, values in deltas.items():
        ax.hist(values, bins=40, alpha=0.55, label=f"{name} (step {step})")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("score delta: chosen - rejected")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=8)
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    return png.getvalue()


def build_reward_evaluator(cfg, tokenizer, accelerator) -> RewardEvaluator:
    """The evaluator of a reward run; every file is read and encoded now (bad records fail before training)."""
    e = cfg.eval
    sets = {name: load_eval_pairs(tokenizer, path, cfg.data.seq_length)
            for name, path in named_files(e.test_reward_model_acc_files).items()}
    delta_dir = Path(e.delta_scores_save_path or Path(cfg.work_dir) / "delta_scores") if e.save_delta_scores else None
    return RewardEvaluator(sets, pad_id_of(tokenizer), accelerator, e.batch_size, Path(cfg.work_dir) / "reward_eval",
                           delta_dir)
