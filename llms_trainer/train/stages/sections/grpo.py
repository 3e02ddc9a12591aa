"""The grpo stage's config: the `grpo:` section (with its reward functions) and its checks (registered with
the stage in grpo.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llms_trainer.config import Datasets, Fail, RunConfig, Section, StageSection, bundled, bundled_files
from llms_trainer.data.prompts import exists
from llms_trainer.data.shards import dataset_files
from llms_trainer.ops.completion_rewards import check_rewards


class RewardFunction(Section):
    """One rule reward of grpo.reward_funcs."""

    name: str = Field(..., description="'module:function' (importable) or 'path/to/file.py:function'; called "
                      "as f(prompts, completions, **columns) -> list of floats, one per completion")
    weight: float = Field(1.0, description="factor of this reward in the total")


class GRPOConfig(Section):
    """grpo: section (stage grpo). Completions per micro-batch per process: train.train_batch_size."""

    prompts: Datasets = Field(None, description="prompt jsonl file(s): {prompt} or {messages} (ending with a user "
                              "turn); other keys are columns handed to reward functions")
    eval_prompts: Datasets = Field(None, description="held-out prompts: greedy completions scored every "
                                   "eval_interval (eval/grpo/*), saved to work_dir/grpo_eval/step_<n>.json")
    num_generations: int = Field(8, ge=2, description="completions sampled per prompt (the group)")
    max_new_tokens: int = Field(256, ge=1, description="tokens per completion at most; a prompt must leave them "
                                "room in data.seq_length")
    temperature: float = Field(1.0, gt=0, description="sampling temperature; log-probs are taken of logits / "
                               "temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    generation_batch_size: int = Field(32, ge=1, description="completions per generate call")
    reward_model: str | None = Field(None, description="reward checkpoint (train_reward_model.py) scoring "
                                     "prompt + completion text with its own tokenizer")
    reward_model_weight: float = Field(1.0, description="factor of the reward model's score in the total")
    normalize_reward_model: bool = Field(False, description="use (score - reward_mean) / reward_std of the "
                                         "reward checkpoint's config.json")
    reward_funcs: list[RewardFunction] = Field(default_factory=list, description="Python rewards [{name: "
                                               "'module:function' or 'file.py:function', weight}], each called "
                                               "as f(prompts, completions, **columns) -> list of floats")
    reward_timeout_s: float | None = Field(600.0, gt=0, description="seconds a reward function may take per call "
                                           "(all this process's completions of a rollout) before the run stops "
                                           "with an error; null: no limit, called on the main thread")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="advantage = reward - group mean, divided by the group std | the batch std | nothing")
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = Field(
        "dapo", description="grpo: token losses averaged per sequence, then over sequences | dr_grpo: summed, "
        "divided by sequences × max_new_tokens | dapo: averaged over all completion tokens of the step")
    epsilon_low: float = Field(0.2, ge=0, lt=1, description="clip the ratio below at 1 - epsilon_low")
    epsilon_high: float = Field(0.2, ge=0, description="clip the ratio above at 1 + epsilon_high (DAPO: 0.28)")
    beta: float = Field(0.0, ge=0, description="weight of the k3 KL to the frozen starting model; 0: no "
                        "reference model at all")
    num_iterations: int = Field(1, ge=1, description="optimizer steps on each rollout (clipping matters from "
                                "the second on)")
    mask_truncated_completions: bool = Field(False, description="completions cut at max_new_tokens get no loss")

    @model_validator(mode="after")
    def _resolve(self) -> GRPOConfig:
        self.prompts, self.eval_prompts = bundled_files(self.prompts), bundled_files(self.eval_prompts)
        self.reward_model = bundled(self.reward_model)
        for function in self.reward_funcs:
            module, sep, name = function.name.rpartition(":")
            if sep and module.endswith(".py"):
                function.name = f"{bundled(module)}:{name}"
        return self



def check_config(cfg: RunConfig, fail: Fail) -> None:
    """The grpo stage's keys: prompt files, a reward (model and/or importable functions), batch shapes."""
    g, t = cfg.grpo, cfg.train
    if g is None or not dataset_files(g.prompts):
        fail("grpo.prompts", "no prompt files; give jsonl files of {\"prompt\": ...} or {\"messages\": [...]} records")
    for key, value in (("grpo.prompts", g.prompts), ("grpo.eval_prompts", g.eval_prompts)):
        for entry in dataset_files(value):
            if not exists(entry):
                fail(key, f"'{entry}' matches nothing")
    check_rewards(g, fail)
    per_step = t.train_batch_size * t.gradient_accumulation_steps
    if per_step % g.num_generations:
        fail("grpo.num_generations", f"{g.num_generations} must divide the completions of one optimizer step per "
             f"process, train.train_batch_size × gradient_accumulation_steps = {per_step}")
    if g.max_new_tokens >= cfg.data.seq_length:
        fail("grpo.max_new_tokens", f"{g.max_new_tokens} leaves no room for a prompt in data.seq_length "
             f"{cfg.data.seq_length}")
    if t.num_training_epochs is not None:
        fail("train.num_training_epochs", "the grpo stage draws prompts endlessly (reshuffled every epoch); bound "
             "the run with train.num_training_steps and remove this key")
    if cfg.data.data:
        fail("data.data", "the grpo stage reads grpo.prompts; remove data.data")


SECTION = StageSection(model=GRPOConfig, check=check_config, chat=True,
                       evaluates=lambda cfg: bool(cfg.grpo.eval_prompts))
