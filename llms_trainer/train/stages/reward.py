"""Reward-model stage: a 1-label sequence classifier trained on preference pairs (Bradley-Terry loss).

Model: `AutoModelForSequenceClassification` (num_labels=1) from train.ckpt (a base or SFT checkpoint; the
score head is new) or --model_config. `train.downscale_weight` multiplies a new head's initial weights by
0.1 (a head loaded from a reward checkpoint is left alone). Under LoRA the head is trained in full
(`modules_to_save`) and saved merged.

Score: the head's value at the last token whose attention_mask is 1 (`sequence_scores`), read from the
head's per-token output, so left or right padding and pad == eos give the same score; positions count real
tokens only. Chosen and rejected sequences of a micro-batch go through ONE forward.

Loss per pair: -log sigmoid(s_chosen - s_rejected - margin) (+ reward.center_rewards_coefficient ·
(s_chosen + s_rejected)^2). Engine form: the engine sums a micro-batch's loss and divides by an item count
over the whole optimizer step, so the stage returns `reward_loss_sum(...)` = (sum over pairs, pairs).
Logged: train/accuracy (chosen scored above rejected), train/margin (mean s_chosen - s_rejected),
train/reward and train/reward_std (all scores of the step).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field

from llms_trainer.config import (
    ConfigError,
    Datasets,
    Fail,
    RunConfig,
    Section,
    StageSection,
    bundled_files,
)
from llms_trainer.data.packing import pad_id
from llms_trainer.data.pairs import (
    BadRecordError,
    PairDataError,
    PairRun,
    PairStream,
    encode_pairs,
    read_pairs,
)
from llms_trainer.data.shards import dataset_files
from llms_trainer.evaluation.pair_accuracy import ScoreStats, build_reward_evaluator
from llms_trainer.model.load import build_sequence_classifier
from llms_trainer.ops.scores import score_head, sequence_scores
from llms_trainer.train.stages import Stage, StageContext

HEAD_DOWNSCALE = 0.1  # train.downscale_weight: factor on a new score head's initial weights


def pairwise_loss(s_chosen: torch.Tensor, s_rejected: torch.Tensor,
                  margin: torch.Tensor | float | None = None) -> torch.Tensor:
    """[B] Bradley-Terry loss per pair: -log sigmoid(s_chosen - s_rejected - margin).

    `margin` (per pair or one number) is the Llama 2 margin loss, TRL RewardTrainer's optional `margin`
    column; None means 0.
    """
    difference = s_chosen - s_rejected
    if margin is not None:
        difference = difference - margin
    return -F.logsigmoid(difference)


def center_rewards(s_chosen: torch.Tensor, s_rejected: torch.Tensor, coef: float) -> torch.Tensor:
    """[B] coef * (s_chosen + s_rejected)^2 per pair; its mean is TRL's `center_rewards_coefficient` term
    coef * mean((s_c + s_r)^2) (Eisenstein et al. 2023), pushing scores towards zero mean."""
    return coef * (s_chosen + s_rejected) ** 2


def reward_loss_sum(s_chosen: torch.Tensor, s_rejected: torch.Tensor,
                    margin: torch.Tensor | float | None = None,
                    center_coef: float = 0.0) -> tuple[torch.Tensor, int]:
    """(sum over pairs of pairwise loss + centering term, number of pairs): the engine's sum form.

    sum / pairs == mean(pairwise_loss) + coef * mean((s_c + s_r)^2), the batch loss."""
    losses = pairwise_loss(s_chosen, s_rejected, margin)
    if center_coef:
        losses = losses + center_rewards(s_chosen, s_rejected, center_coef)
    return losses.sum(), losses.numel()


def pair_statistics(s_chosen: torch.Tensor, s_rejected: torch.Tensor) -> dict[str, tuple]:
    """accuracy and margin per pair as (sum, count); reward as (sum, sum of squares, count) over all scores."""
    pairs = s_chosen.numel()
    gap = (s_chosen - s_rejected).detach()
    scores = torch.cat([s_chosen, s_rejected]).detach()
    return {"accuracy": ((gap > 0).sum(), pairs), "margin": (gap.sum(), pairs),
            "reward": (scores.sum(), (scores * scores).sum(), 2 * pairs)}


# -- the stage ------------------------------------------------------------------------------------------

def build_model(cfg: RunConfig, tokenizer, model_config: str | None = None, weights_dir=None) -> torch.nn.Module:
    """The reward model: a 1-label classifier; a new head is downscaled when train.downscale_weight.

    The config records `reward_seq_length` (data.seq_length), the truncation `score_pairs` applies by default.
    """
    model = build_sequence_classifier(cfg, tokenizer, model_config, weights_dir)
    model.config.reward_seq_length = cfg.data.seq_length
    architectures = getattr(model.config, "architectures", None) or []
    head_is_new = not any(name.endswith("ForSequenceClassification") for name in architectures)
    if cfg.train.downscale_weight and head_is_new:
        downscale(score_head(model).weight, HEAD_DOWNSCALE)
    return model


def downscale(weight: torch.nn.Parameter, factor: float) -> None:
    """weight *= factor, also when DeepSpeed ZeRO-3 built it partitioned (zero3_init_flag)."""
    if hasattr(weight, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([weight], modifier_rank=0), torch.no_grad():
            weight.mul_(factor)
        return
    with torch.no_grad():
        weight.mul_(factor)


def pairs_per_micro_batch(cfg: RunConfig) -> int:
    """data.batch_size (the original key) when given, else train.train_batch_size."""
    return cfg.data.batch_size or cfg.train.train_batch_size


@dataclass
class RewardData:
    """What build_train_data returns: the pair stream, the train settings derived from it (`derive_train`) and
    the score statistics the evaluator records and the checkpoint saves (`RewardRun.saved_config`)."""

    stream: PairStream
    train_settings: dict[str, int]
    score_stats: ScoreStats = field(default_factory=ScoreStats)


def build_train_data(cfg: RunConfig, tokenizer, accelerator) -> RewardData:
    """This process's pair stream of `pairs_per_micro_batch` pairs a micro-batch; when only
    train.num_training_epochs is given, the full optimizer steps the epochs hold (ConfigError when none)."""
    d, t = cfg.data, cfg.train
    try:
        records, report = read_pairs(dataset_files(d.reward_model_datasets), d.on_bad_record)
        pairs = encode_pairs(tokenizer, records, d.seq_length)
    except BadRecordError as err:
        raise ConfigError(f"key data.reward_model_datasets: {err}; fix the line or set data.on_bad_record: "
                          "skip") from None
    except PairDataError as err:
        raise ConfigError(f"key data.reward_model_datasets: {err}") from None
    if not len(pairs):
        raise ConfigError(f"key data.reward_model_datasets: all {pairs.identical} pairs have identical chosen and "
                          f"rejected sequences after truncation to data.seq_length={d.seq_length}; raise it")
    batch_size, world = pairs_per_micro_batch(cfg), accelerator.num_processes
    stream = PairStream(pairs, batch_size, accelerator.process_index, world, t.seed, t.num_training_epochs,
                        pad_id(tokenizer))
    per_step = batch_size * t.gradient_accumulation_steps * world
    settings = {"train_batch_size": batch_size}
    if t.num_training_steps is None:
        settings["num_training_steps"] = steps = stream.total_batches() // t.gradient_accumulation_steps
        if steps == 0:
            raise ConfigError(f"key train.num_training_epochs: {t.num_training_epochs} epoch(s) of {len(pairs)} "
                              f"pairs hold no full optimizer step of {per_step} pairs; lower data.batch_size or "
                              "train.gradient_accumulation_steps, or raise the epochs")
        if t.num_warmup_steps > steps:
            raise ConfigError(f"key train.num_warmup_steps: {t.num_warmup_steps} exceeds the "
                              f"{steps} steps computed from train.num_training_epochs")
    files = ", ".join(f"{os.path.basename(name)} {count}" for name, count in report.pairs.items())
    accelerator.print(f"reward data: {len(pairs)} pairs ({files}); {sum(report.bad.values())} bad lines skipped, "
                      f"{pairs.identical} pairs dropped as identical after truncation to {d.seq_length} tokens; "
                      f"{per_step} pairs per optimizer step, "
                      f"{settings.get('num_training_steps', t.num_training_steps)} steps")
    return RewardData(stream, settings)


def derive_train(cfg: RunConfig, data: RewardData) -> dict[str, int]:
    """train.train_batch_size = the pairs per micro-batch, and train.num_training_steps when it came from
    train.num_training_epochs."""
    return data.train_settings


class RewardRun(PairRun):
    """The run object: micro-batches from the pair stream, one forward per micro-batch for both sides."""

    def __init__(self, stream: PairStream, center_coef: float, score_stats: ScoreStats | None = None):
        self.stream, self.center_coef = stream, center_coef
        self.score_stats = score_stats or ScoreStats()

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        scores = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
        s_chosen, s_rejected = scores.chunk(2)
        loss, _ = reward_loss_sum(s_chosen, s_rejected, batch.get("margin"), self.center_coef)
        return loss, pair_statistics(s_chosen, s_rejected)

    def saved_config(self) -> dict[str, float]:
        """reward_mean / reward_std of the latest eval, for the checkpoint's config.json (RL normalises by them)."""
        return self.score_stats.as_config()


def start(cfg: RunConfig, ctx: StageContext) -> RewardRun:
    data: RewardData = ctx.data
    return RewardRun(data.stream, (cfg.reward or RewardConfig()).center_rewards_coefficient or 0.0, data.score_stats)


def build_evals(cfg: RunConfig, tokenizer, accelerator, data: RewardData) -> list:
    """Pair accuracy on each file of eval.test_reward_model_acc_files (read now: bad records fail early); the
    score statistics go to `data.score_stats`."""
    files = cfg.eval.test_reward_model_acc_files
    return [build_reward_evaluator(cfg, tokenizer, accelerator, data.score_stats)] if files else []


class RewardConfig(Section):
    """reward: section (stage reward)."""

    center_rewards_coefficient: float | None = Field(None, ge=0, description="adds coef * mean((s_chosen + "
                                                     "s_rejected)^2) to the loss, pulling scores towards zero "
                                                     "mean (TRL's option of that name); null: off")


InputFiles = Annotated[Datasets, AfterValidator(bundled_files)]
# the original reward-model configs' keys in data: and eval:, read by this stage only
SHARED_KEYS = {
    "data": {
        "reward_model_datasets": (InputFiles, Field(None, description="reward stage: preference-pair jsonl file(s), "
                                                    "globs or shard dirs (compress_data.py --mode reward); a path, "
                                                    "a list or {name: path}")),
        "batch_size": (int | None, Field(None, ge=1, description="reward stage: pairs per micro-batch per process "
                                         "(takes the place of train.train_batch_size)")),
        "dataset_map_num_proc": (int | None, Field(None, ge=1, description="accepted for compatibility; no effect: "
                                                   "pairs are tokenized in batches by the fast tokenizer"))},
    "eval": {
        "test_reward_model_acc_files": (InputFiles, Field(None, description="reward stage: held-out preference-pair "
                                                          "jsonl file(s) for pair accuracy; a path, a list or "
                                                          "{name: path}")),
        "save_delta_scores": (bool, Field(False, description="reward stage: write every eval's chosen - rejected "
                                          "scores to step_<n>.json")),
        "delta_scores_save_path": (str | None, Field(None, description="reward stage: directory of the delta files; "
                                                     "default work_dir/delta_scores"))},
}


def check_config(cfg: RunConfig, fail: Fail) -> None:
    """The reward stage's keys: its data and eval files exist, no keys of other stages, steps or epochs."""
    d, t, e = cfg.data, cfg.train, cfg.eval
    entries = dataset_files(d.reward_model_datasets)
    if not entries:
        fail("data.reward_model_datasets", "no preference-pair files; give jsonl files, globs or shard dirs "
             "of {prompt, selected, rejected} records")
    for entry in entries:
        if not (os.path.exists(entry) or glob.glob(entry)):
            fail("data.reward_model_datasets", f"'{entry}' matches nothing")
    if d.data:
        fail("data.data", "the reward stage reads data.reward_model_datasets; remove data.data")
    if e.eval_methods:
        fail("eval.eval_methods", "the reward stage evaluates pair accuracy on eval.test_reward_model_acc_files; "
             "remove eval_methods")
    for path in dataset_files(e.test_reward_model_acc_files):
        if not os.path.isfile(path):
            fail("eval.test_reward_model_acc_files", f"'{path}' does not exist")
    if t.train_and_eval and not e.test_reward_model_acc_files:
        fail("eval.test_reward_model_acc_files", "empty while train.train_and_eval is true; list held-out pair "
             "files or set train.train_and_eval: false")
    if d.batch_size and "train_batch_size" in t.model_fields_set and t.train_batch_size != d.batch_size:
        fail("data.batch_size", f"{d.batch_size} pairs per micro-batch, but train.train_batch_size is "
             f"{t.train_batch_size}; keep one of them")
    if t.num_training_steps is None and t.num_training_epochs is None:
        fail("train.num_training_steps", "set it, or train.num_training_epochs (the steps are then computed from "
             "the number of pairs)")


STAGE = Stage(name="reward", build_model=build_model, build_train_data=build_train_data,
              build_evals=build_evals, start=start, derive_train=derive_train,
              section=StageSection(model=RewardConfig, check=check_config, shared_keys=SHARED_KEYS,
                                   foreign="read by the reward stage only (train_reward_model.py)",
                                   steps_from_epochs=True,
                                   evaluates=lambda cfg: bool(cfg.eval.test_reward_model_acc_files)))
