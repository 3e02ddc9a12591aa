"""Reward-model evaluation: pair accuracy per file and score deltas (scoring itself: `llms_trainer.ops.scores`).

For each file of eval.test_reward_model_acc_files (`{name: path}`, a list or one path; unnamed files are
named by their stem), with delta = s_chosen - s_rejected:

    eval/reward/<name>/accuracy     share of pairs with delta > 0 (a tie counts as wrong)
    eval/reward/<name>/delta_mean   mean and (population) std of delta
    eval/reward/<name>/delta_std
    eval/reward/accuracy            over the pairs of all files
    eval/reward/reward_mean         mean and std of every score (chosen and rejected) of all files; also kept
    eval/reward/reward_std          in the run's `ScoreStats`, which the reward stage hands to the checkpoint
                                    (config.json `reward_mean` / `reward_std`, for RL to normalise rewards)

Each eval draws the delta histogram of every file (and, greyed, of the first eval) into
`work_dir/reward_eval/delta_hist_step<n>.png`; with eval.save_delta_scores the deltas are written to
`<eval.delta_scores_save_path or work_dir/delta_scores>/step_<n>.json` as {"step", "deltas": {name: [...]}}.
Pairs are encoded as in training (llms_trainer.data.pairs), split across processes and gathered once.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from llms_trainer.data.packing import pad_id
from llms_trainer.data.pairs import PairDataError, encode_sequences, read_pairs
from llms_trainer.data.shards import dataset_files
from llms_trainer.evaluation import EvalDataError
from llms_trainer.ops.scores import Row, scored_in_shares


def named_files(value: str | list[str] | dict[str, str]) -> dict[str, str]:
    """{name: path} of an eval dataset key; files of a list are named by their stem (made unique)."""
    if isinstance(value, dict):
        return {str(name): path for name, path in value.items()}
    named: dict[str, str] = {}
    for path in dataset_files(value):
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


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


@dataclass
class ScoreStats:
    """Mean and std of every score of the latest reward eval (None before the first)."""

    mean: float | None = None
    std: float | None = None

    def as_config(self) -> dict[str, float]:
        """{"reward_mean", "reward_std"} for the saved model's config.json; {} before the first eval."""
        return {} if self.mean is None else {"reward_mean": self.mean, "reward_std": self.std}


class RewardEvaluator:
    """The engine's evaluator `(model, step) -> metrics` for the reward stage (call on every process)."""

    def __init__(self, sets: dict[str, list[tuple[Row, Row]]], fill: int, accelerator, batch_size: int,
                 plot_dir: Path, delta_dir: Path | None, stats: ScoreStats):
        self.sets, self.fill, self.accelerator, self.batch_size = sets, fill, accelerator, batch_size
        self.plot_dir, self.delta_dir, self.stats = plot_dir, delta_dir, stats
        self.first: tuple[int, list[float]] | None = None  # (step, deltas) of the first eval

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        items = [(name, pair) for name, pairs in self.sets.items() for pair in pairs]
        scores = scored_in_shares(model, items, lambda item: list(item[1]), self.fill, self.batch_size,
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
        self.stats.mean, self.stats.std = mean, std
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


def build_reward_evaluator(cfg, tokenizer, accelerator, stats: ScoreStats) -> RewardEvaluator:
    """The evaluator of a reward run, recording into `stats`; every file is read and encoded now (bad records
    fail before training)."""
    e = cfg.eval
    sets = {name: load_eval_pairs(tokenizer, path, cfg.data.seq_length)
            for name, path in named_files(e.test_reward_model_acc_files).items()}
    delta_dir = Path(e.delta_scores_save_path or Path(cfg.work_dir) / "delta_scores") if e.save_delta_scores else None
    return RewardEvaluator(sets, pad_id(tokenizer), accelerator, e.batch_size, Path(cfg.work_dir) / "reward_eval",
                           delta_dir, stats)
