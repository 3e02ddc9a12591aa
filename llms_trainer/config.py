"""Schema of every training YAML and `load_config(path, overrides)`.

Every key of the original configs loads unchanged; new keys are additions with defaults. Unknown keys,
wrong types, missing files and impossible combinations raise `ConfigError` with one message of the form
`CFG: key a.b.c: problem` before any model is loaded. Input paths are relative to the working directory,
falling back to the repository's bundled files (so the shipped configs run from any directory); work_dir is
relative to the working directory.
Intervals and step counts are in optimizer steps (one step = `gradient_accumulation_steps` micro-batches on
every process).
"""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llms_trainer.commands import REPO_ROOT
from llms_trainer.evaluation.methods import EVAL_ALIASES, EVAL_METHODS, dataset_files
from llms_trainer.io import atomic_write
from llms_trainer.train.stages import REGISTRY as STAGES

# accelerate tracker name → module that must import for it to work
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "aim": "aim", "comet_ml": "comet_ml",
            "mlflow": "mlflow", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio"}


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False, allow_inf_nan=False)


Datasets = str | list[str] | dict[str, str] | None


class DataConfig(Section):
    mode: Literal["pretrain", "sft"] = Field("pretrain", description="the stage of train_llms.py runs (the "
                                             "top-level `stage:` key, when set, takes its place)")
    data: dict[str, str] = Field(default_factory=dict, description="source name → shard directory or glob "
                                 "(data/pretrain_data/<source>/*.jsonl.zst written by data/compress_data.py)")
    sample_policy_file: str | None = Field(None, description="JSON {source: ratio}: target share of training "
                                           "tokens per source; default: shares proportional to raw bytes")
    pad_to_max: bool = Field(False, description="pad every batch to seq_length (else to its longest row)")
    sequence_sample_mode: Literal["truncation", "sample", "split", "none"] = Field(
        "none", description="one row per document when concat_multiple_sequence is false: truncation|none keep "
        "the first seq_length tokens, sample a random window, split every seq_length chunk")
    concat_multiple_sequence: bool = Field(True, description="pack documents (EOS between) into full rows of "
                                           "seq_length, remainder carried into the next row")
    num_sequences: int | None = Field(None, ge=1, description="accepted for compatibility; no effect: packing "
                                      "carries the remainder over instead of joining a fixed number of documents")
    seq_length: int = Field(2048, ge=2, description="tokens per row")
    tokenizer_path: str | None = Field(None, description="HF tokenizer dir or hub id; default: train.ckpt")
    split_by_shard: bool = Field(False, description="accepted for compatibility; no effect: records are dealt "
                                 "to ranks × workers one by one, which balances any number of shards")
    shuffle_buffer_records: int = Field(1024, ge=1, description="records of one data unit shuffled together")
    on_bad_record: Literal["error", "skip"] = Field("error", description="training records that are unusable "
                                                    "(every stage: JSON nested deeper than 100 levels or holding "
                                                    "a lone surrogate escape such as \\ud800; sft: no assistant "
                                                    "turn, an empty turn, a wrong role order, an unknown format; "
                                                    "pairs: not JSON, a field missing, a non-numeric margin): "
                                                    "stop naming the file and line, or skip and count them")
    pack_buffer_conversations: int = Field(1024, ge=1, description="sft packing: conversations grouped per "
                                           "best-fit-decreasing round")
    document_attention: bool = Field(False, description="pretraining packed rows: positions restart per "
                                     "document and attention stays inside it (SFT packing always does)")
    # reward-model keys (read by the reward stage only)
    reward_model_datasets: Datasets = Field(None, description="reward stage: preference-pair jsonl file(s), "
                                            "globs or shard dirs (compress_data.py --mode reward); a path, a "
                                            "list or {name: path}")
    batch_size: int | None = Field(None, ge=1, description="reward stage: pairs per micro-batch per process "
                                   "(takes the place of train.train_batch_size)")
    dataset_map_num_proc: int | None = Field(None, ge=1, description="accepted for compatibility; no effect: "
                                             "pairs are tokenized in batches by the fast tokenizer")


class TrainConfig(Section):
    train_batch_size: int = Field(1, ge=1, description="micro-batch rows per process (per device)")
    num_training_steps: int | None = Field(None, ge=1, description="optimizer steps to train (schedule length); "
                                           "required, except that the reward stage computes it from "
                                           "num_training_epochs when it is not given")
    num_warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear warmup")
    initializer_range: float | None = Field(None, gt=0, description="std of the init (from-scratch only)")
    lr: float = Field(3e-4, gt=0, description="peak learning rate")
    min_lr: float = Field(0.0, ge=0, description="learning rate at the end of the decay (cosine_with_min_lr, "
                          "warmup_stable_decay)")
    lr_scheduler_type: Literal["cosine_with_min_lr", "linear", "constant_with_warmup", "warmup_stable_decay"] = Field(
        "cosine_with_min_lr", description="transformers.get_scheduler name: linear warmup, then cosine to min_lr | "
        "linear to 0 | constant | constant then a final decay to min_lr over num_decay_steps")
    num_decay_steps: int | None = Field(None, ge=1, description="warmup_stable_decay: optimizer steps of the final "
                                        "decay; default: 10% of num_training_steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decay; never applied to norms and biases")
    resize_model_vocab_size: bool = Field(False, description="resize the model's embeddings to the "
                                          "tokenizer's length when they differ (else a differing size is an error)")
    ckpt: str | None = Field(None, description="HF model dir or hub id to continue from; null: --model_config")
    train_num_workers: int = Field(0, ge=0, description="DataLoader worker processes per rank")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    prefetch_factor: int | None = Field(None, ge=1, description="batches prefetched per worker")
    train_and_eval: bool = Field(False, description="run eval.eval_methods every eval_interval and at the end")
    gradient_checkpointing_enable: bool = Field(False, description="recompute activations in backward")
    use_lora: bool = Field(False, description="train LoRA adapters (peft) instead of all weights")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], description="LoRA targets")
    lora_rank: int = Field(8, ge=1, description="LoRA rank r")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA alpha (scale = alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    save_total_limit: int | None = Field(None, ge=1, description="keep the newest N complete checkpoints")
    img_log_dir: str | None = Field(None, description="directory of the metrics PNG; default: work_dir")
    img_log_name: str = Field("performance", description="file name (without .png) of the metrics plot")
    train_token_embeddings_only: bool = Field(False, description="freeze everything except the layers "
                                              "named by token_embedding_layer_name")
    token_embedding_layer_name: str | list[str] = Field(
        "embed_tokens", description="module name(s) trained with train_token_embeddings_only, e.g. "
        "[embed_tokens, lm_head]")
    embedding_warmup_steps: int = Field(0, ge=0, description="optimizer steps at the start that train only the "
                                        "input and output token embeddings, at embedding_warmup_lr (every other "
                                        "weight at lr 0); the lr schedule then runs over the remaining steps. "
                                        "0: off")
    embedding_warmup_lr: float | None = Field(None, gt=0, description="constant learning rate of the embeddings "
                                              "during embedding_warmup_steps; default: train.lr")
    embedding_warmup_rows_from: int | None = Field(None, ge=1, description="train only the embedding rows from "
                                                   "this id on (the new tokens: the old vocabulary size) during "
                                                   "embedding_warmup_steps; null: all rows")
    num_training_epochs: int | None = Field(None, ge=1, description="stop when every source has been read "
                                            "this many times (also bounded by num_training_steps); reward "
                                            "stage: passes over the pairs")
    downscale_weight: bool = Field(False, description="reward stage: multiply a newly initialised score head "
                                   "by 0.1; no effect in other stages")
    seed: int = Field(42, description="seed of model init, data order and dropout")
    resume: str = Field("auto", description="auto: newest complete checkpoint in work_dir | a checkpoint dir "
                        "| none")
    overwrite_work_dir: bool = Field(False, description="clear the checkpoints already in work_dir before a fresh "
                                     "run (resume: none) or before resuming from an explicit checkpoint dir; "
                                     "without it such a run stops with an error")
    max_grad_norm: float | None = Field(1.0, ge=0, description="clip the global grad norm; null or 0: off")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="autocast; auto: the accelerate config's value, else bf16 on a GPU that has it, "
        "else no")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="dtype of the weights")
    trust_remote_code: bool = Field(False, description="allow model code from the checkpoint")
    log_with: list[str] = Field(default_factory=list, description="accelerate trackers, any of "
                                f"{', '.join(TRACKERS)} (each needs its package installed)")
    peak_flops_per_device: float | None = Field(None, gt=0, description="peak FLOP/s of one device for MFU; "
                                                "default: known GPUs only")
    loss_chunk_tokens: int = Field(1024, ge=0, description="labelled positions per LM-head chunk of the next-token "
                                   "loss: only labelled positions reach the head and the [tokens, vocab] fp32 "
                                   "logits never exist whole; 0: the model's own full logits")
    compile: bool = Field(False, description="torch.compile every decoder layer (inductor; on CPU it needs a C++ "
                          "compiler); the first steps are slow while it compiles; not under DeepSpeed ZeRO-3")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="attention kernel: sdpa (torch scaled_dot_product_attention), eager (plain matmuls), "
        "flash_attention_2 (needs the flash-attn package and a CUDA GPU)")


class EvalConfig(Section):
    eval_methods: list[str] = Field(default_factory=list, description=f"any of {', '.join(EVAL_METHODS)}")
    single_choice_dataset: Datasets = Field(None, description="knowledge jsonl file(s)")
    generation_dataset: Datasets = Field(None, description="generation prompts jsonl file(s)")
    generation_eval_save_path: str | None = Field(None, description="where step_<n>.json outputs go; "
                                                  "default work_dir/generation_eval (old key: "
                                                  "genration_eval_save_path)")
    nll_dataset: Datasets = Field(None, description="held-out text jsonl file(s)")
    chat_nll_dataset: Datasets = Field(None, description="held-out conversations (any SFT record format) for "
                                       "chat_nll_eval: NLL of the assistant tokens only")
    test_reward_model_acc_files: Datasets = Field(None, description="reward stage: held-out preference-pair "
                                                  "jsonl file(s) for pair accuracy; a path, a list or {name: path}")
    save_delta_scores: bool = Field(False, description="reward stage: write every eval's chosen - rejected "
                                    "scores to step_<n>.json")
    delta_scores_save_path: str | None = Field(None, description="reward stage: directory of the delta files; "
                                               "default work_dir/delta_scores")
    max_new_tokens: int = Field(32, ge=1, description="generation_eval: tokens generated per prompt")
    few_shot_prefix: str = Field("", description="single_choice_eval: text put before every question")
    batch_size: int = Field(8, ge=1, description="eval rows per forward, per process")
    source_holdout_records: int = Field(0, ge=0, description="pretraining: the last N records of every source "
                                        "(manifest order) never train; with train_and_eval their nats per "
                                        "character and per token are logged as eval/source/<name>/... every "
                                        "eval_interval; 0: off")

    @model_validator(mode="before")
    @classmethod
    def _old_spelling(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "genration_eval_save_path" in raw:
            raw = dict(raw)
            old = raw.pop("genration_eval_save_path")
            if raw.get("generation_eval_save_path") not in (None, old):
                raise ValueError("genration_eval_save_path and generation_eval_save_path differ; keep one")
            raw["generation_eval_save_path"] = old
        return raw

    def methods(self) -> list[str]:
        """eval_methods with old names mapped to the current ones."""
        return [EVAL_ALIASES.get(m, m) for m in self.eval_methods]


class SFTConfig(Section):
    """sft: section (stage sft; its data keys live in data:)."""


class RewardConfig(Section):
    """reward: section (stage reward)."""

    center_rewards_coefficient: float | None = Field(None, ge=0, description="adds coef * mean((s_chosen + "
                                                     "s_rejected)^2) to the loss, pulling scores towards zero "
                                                     "mean (TRL's option of that name); null: off")


def _bundled_files(value: Datasets) -> Datasets:
    """A dataset key (path, list or {name: path}) with each relative path resolved by `bundled`."""
    if isinstance(value, str):
        return bundled(value)
    if isinstance(value, list):
        return [bundled(v) for v in value]
    if isinstance(value, dict):
        return {k: bundled(v) for k, v in value.items()}
    return value


class DPOConfig(Section):
    """dpo: section (stage dpo). Pairs per micro-batch per process: train.train_batch_size."""

    datasets: Datasets = Field(None, description="preference-pair jsonl file(s) {prompt, selected|chosen, "
                               "rejected}, globs or shard dirs (compress_data.py --mode reward), as "
                               "data.reward_model_datasets of the reward stage; a path, a list or {name: path}")
    eval_datasets: Datasets = Field(None, description="held-out pair files for eval/dpo/<name>/* (loss, reward "
                                    "margin and accuracy against the reference) with train.train_and_eval")
    beta: float = Field(0.1, gt=0, description="strength of the tie to the reference (the implicit reward is "
                        "beta · log(pi / pi_ref) of the response)")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        "sigmoid", description="sigmoid: DPO | ipo: squared distance to 1/(2 beta) | hinge: SLiC | robust: "
        "noise-robust DPO (with label_smoothing)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="assumed share of flipped labels (cDPO for "
                                   "sigmoid, robust DPO); 0: off; not with ipo or hinge")
    precompute_ref_logps: bool = Field(False, description="score every pair with the reference once at start, "
                                       "then free it (no reference forward per step, no reference in memory)")

    @model_validator(mode="after")
    def _resolve(self) -> DPOConfig:
        self.datasets, self.eval_datasets = _bundled_files(self.datasets), _bundled_files(self.eval_datasets)
        return self

    @property
    def evaluates(self) -> bool:
        return bool(self.eval_datasets)


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
        self.prompts, self.eval_prompts = _bundled_files(self.prompts), _bundled_files(self.eval_prompts)
        self.reward_model = bundled(self.reward_model)
        for function in self.reward_funcs:
            module, sep, name = function.name.rpartition(":")
            if sep and module.endswith(".py"):
                function.name = f"{bundled(module)}:{name}"
        return self

    @property
    def evaluates(self) -> bool:
        return bool(self.eval_prompts)


# stage → its section key and class (a stage without an entry has no section)
STAGE_SECTIONS: dict[str, str] = {"sft": "sft", "reward": "reward", "dpo": "dpo", "grpo": "grpo"}
# stages that compute train.num_training_steps from train.num_training_epochs when it is not given
STEPS_FROM_EPOCHS = ("reward",)
# keys of the original reward-model configs, read by the reward stage only
REWARD_ONLY_KEYS = (("data", "reward_model_datasets"), ("data", "batch_size"), ("data", "dataset_map_num_proc"),
                    ("eval", "test_reward_model_acc_files"), ("eval", "save_delta_scores"),
                    ("eval", "delta_scores_save_path"))


class RunConfig(Section):
    stage: str | None = Field(None, description=f"the stage to run: {', '.join(STAGES)} (default: data.mode; "
                              "train_reward_model.py and train_rl.py set it)")
    sft: SFTConfig | None = Field(None, description="options of the sft stage")
    reward: RewardConfig | None = Field(None, description="options of the reward stage")
    dpo: DPOConfig | None = Field(None, description="options of the dpo stage")
    grpo: GRPOConfig | None = Field(None, description="options of the grpo stage")
    log_interval: int = Field(10, ge=1, description="optimizer steps between metric logs")
    eval_interval: int = Field(500, ge=1, description="optimizer steps between evals (train_and_eval)")
    save_interval: int = Field(1000, ge=1, description="optimizer steps between checkpoints")
    work_dir: str = Field(..., description="checkpoints, metrics.jsonl, config.yaml")
    data: DataConfig = Field(..., description="what to read and how to batch it")
    train: TrainConfig = Field(..., description="model, optimizer, schedule, checkpoints")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="evaluation during training")

    def stage_name(self) -> str:
        """The stage this config runs: `stage`, else data.mode."""
        return self.stage or self.data.mode


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`a.b=value` strings → {"a.b": parsed value}; values are YAML (numbers, lists, null...)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{pair}': expected key.sub=value")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def _apply_override(raw: dict, dotted: str, value: Any, where: str) -> None:
    node = raw
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: key {'.'.join(parts[: i + 1])}: is a value, cannot set {dotted}")
    node[parts[-1]] = value


def _format_validation(err: ValidationError, where: str) -> str:
    problems = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"] if not str(p).startswith(("function-", "literal[")))
        msg = "unknown key (check the spelling)" if item["type"] == "extra_forbidden" else item["msg"]
        got = "" if item["type"] in ("missing", "extra_forbidden") else f" (got {item.get('input')!r})"
        problems.append(f"key {loc or '(top level)'}: {msg}{got}")
    return f"{where}: " + "; ".join(problems)


def _looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or os.path.exists(path) or path.count("/") > 1


def _check_files(cfg: RunConfig, where: str, check_data: bool = True) -> None:
    """Missing files and impossible combinations, each named by its key (`check_data`: the shard globs too)."""
    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"{where}: key {key}: {problem}")

    d, t, e = cfg.data, cfg.train, cfg.eval
    _check_stage(cfg, fail)
    if cfg.stage_name() in ("pretrain", "sft") and not d.data:
        fail("data.data", "no sources; give {source: glob of shards}")
    for name, pattern in d.data.items() if check_data else ():
        if not (os.path.isdir(pattern) or glob.glob(pattern)):
            fail(f"data.data.{name}", f"'{pattern}' matches nothing (run python data/compress_data.py first?)")
    if d.sample_policy_file:
        from llms_trainer.data.mixing import PolicyError, load_policy

        try:
            load_policy(d.sample_policy_file, list(d.data))
        except PolicyError as err:
            fail("data.sample_policy_file", str(err))
    for key, path in (("data.tokenizer_path", d.tokenizer_path), ("train.ckpt", t.ckpt)):
        if path and _looks_local(path) and not os.path.exists(os.path.expanduser(path)):
            fail(key, f"'{path}' does not exist")
    if not d.tokenizer_path and not t.ckpt:
        fail("data.tokenizer_path", "required when training from --model_config (train.ckpt is null)")
    if t.min_lr > t.lr:
        fail("train.min_lr", f"{t.min_lr} is above train.lr {t.lr}")
    if t.num_training_steps is None and cfg.stage_name() not in STEPS_FROM_EPOCHS:
        fail("train.num_training_steps", "required: the number of optimizer steps to train")
    if t.num_training_steps is not None and t.num_warmup_steps > t.num_training_steps:
        fail("train.num_warmup_steps", f"{t.num_warmup_steps} exceeds num_training_steps {t.num_training_steps}")
    if t.use_lora and t.train_token_embeddings_only:
        fail("train.use_lora", "cannot be combined with train_token_embeddings_only; pick one")
    _check_embedding_warmup(t, fail)
    if t.use_lora and not t.target_modules:
        fail("train.target_modules", "empty; LoRA needs at least one module name, e.g. [q_proj, v_proj]")
    if t.overwrite_work_dir and t.resume == "auto":
        fail("train.overwrite_work_dir", "true with train.resume=auto would clear the checkpoint it resumes; "
             "set train.resume=none (fresh run) or a checkpoint dir")
    for i, tracker in enumerate(t.log_with):
        if tracker not in TRACKERS:
            fail(f"train.log_with.{i}", f"'{tracker}' is not a tracker; use one of {', '.join(TRACKERS)}")
        if importlib.util.find_spec(TRACKERS[tracker]) is None:
            fail(f"train.log_with.{i}", f"'{tracker}' needs the {TRACKERS[tracker]} package: pip install "
                 f"{TRACKERS[tracker]}, or remove it")
    _check_kernels(t, fail)
    if t.resume not in ("auto", "none") and not os.path.isdir(t.resume):
        fail("train.resume", f"'{t.resume}' is not a directory (use auto, none or a checkpoint dir)")
    for i, method in enumerate(e.methods()):
        if method not in EVAL_METHODS:
            fail(f"eval.eval_methods.{i}", f"'{e.eval_methods[i]}' is not one of {', '.join(EVAL_METHODS)}")
        key = EVAL_METHODS[method].dataset_key
        files = dataset_files(getattr(e, key))
        if not files:
            fail(f"eval.{key}", f"required by eval method {method}")
        for path in files:
            if not os.path.isfile(path):
                fail(f"eval.{key}", f"'{path}' does not exist")
    section = getattr(cfg, STAGE_SECTIONS.get(cfg.stage_name(), ""), None)
    own_evals = ((cfg.stage_name() == "reward" and e.test_reward_model_acc_files)  # the reward stage's pair accuracy
                 or getattr(section, "evaluates", False)  # dpo / grpo held-out files
                 or e.source_holdout_records)  # pretraining: each source's held-out records
    if e.source_holdout_records and cfg.stage_name() != "pretrain":
        fail("eval.source_holdout_records", f"holds out pretraining records; this run's stage is "
             f"{cfg.stage_name()}: remove it")
    if t.train_and_eval and not e.eval_methods and not own_evals:
        fail("eval.eval_methods", "empty while train.train_and_eval is true; list methods or set it false")


def _check_embedding_warmup(t: TrainConfig, fail) -> None:
    """train.embedding_warmup_steps leaves steps for the schedule and combines only with full training."""
    steps = t.embedding_warmup_steps
    if not steps:
        for key in ("embedding_warmup_lr", "embedding_warmup_rows_from"):
            if getattr(t, key) is not None:
                fail(f"train.{key}", "has no effect without train.embedding_warmup_steps; set both or neither")
        return
    if t.embedding_warmup_rows_from is not None and t.weight_decay:
        fail("train.embedding_warmup_rows_from", f"needs train.weight_decay 0 (got {t.weight_decay}): AdamW's "
             "decay would move the rows it keeps frozen")
    if t.num_training_steps is not None and steps >= t.num_training_steps:
        fail("train.embedding_warmup_steps", f"{steps} leaves no step of num_training_steps "
             f"{t.num_training_steps} for training all weights")
    if t.num_training_steps is not None and t.num_warmup_steps > t.num_training_steps - steps:
        fail("train.num_warmup_steps", f"{t.num_warmup_steps} exceeds the {t.num_training_steps - steps} steps "
             "after train.embedding_warmup_steps")
    for key in ("use_lora", "train_token_embeddings_only"):
        if getattr(t, key):
            fail("train.embedding_warmup_steps", f"cannot be combined with train.{key}; pick one")


def _check_kernels(t: TrainConfig, fail) -> None:
    """train.attn_implementation and train.compile can run on this machine."""
    import shutil

    import torch

    if t.attn_implementation == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            fail("train.attn_implementation", "flash_attention_2 needs the flash-attn package (pip install "
                 "flash-attn --no-build-isolation); or use sdpa")
        if not torch.cuda.is_available():
            fail("train.attn_implementation", "flash_attention_2 runs on CUDA GPUs only; use sdpa here")
        if t.dtype == "float32" and t.mixed_precision == "no":
            fail("train.attn_implementation", "flash_attention_2 needs bf16/fp16: set train.dtype: bfloat16 or "
                 "train.mixed_precision: bf16")
    if t.compile and not torch.cuda.is_available() and not any(
            shutil.which(cxx) for cxx in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if cxx):
        fail("train.compile", "torch.compile on CPU needs a C++ compiler (g++ or clang++; apt install g++), "
             "none found; or set it false")


def _check_stage(cfg: RunConfig, fail) -> None:
    """The stage exists in this install, and only its own section and keys are set."""
    from llms_trainer.train.stages import StageNotAvailable, available_stages, get_stage

    name = cfg.stage_name()
    key = "stage" if cfg.stage else "data.mode"
    if name not in STAGES:
        fail(key, f"'{name}' is not a stage; stages: {', '.join(STAGES)}")
    try:
        get_stage(name)
    except StageNotAvailable as err:
        fail(key, f"{err}; stages available here: {', '.join(available_stages())}")
    if get_stage(name).check_config is not None:
        get_stage(name).check_config(cfg, fail)
    for stage, section in STAGE_SECTIONS.items():
        if stage != name and getattr(cfg, section) is not None:
            fail(section, f"options of the {stage} stage, but this run's stage is {name}: remove the section "
                 f"or set stage: {stage}")
    if name != "reward":
        for section, field in REWARD_ONLY_KEYS:
            if getattr(getattr(cfg, section), field) not in (None, False):
                fail(f"{section}.{field}", f"read by the reward stage only (train_reward_model.py); this run's "
                     f"stage is {name}: remove it")


def load_config(path: str | Path, overrides: list[str] | None = None, check_files: bool = True,
                check_data: bool = True) -> RunConfig:
    """Read, override (`key.sub=value`), validate; raises ConfigError naming the file and key.

    `check_files=False` validates types and keys only; `check_data=False` skips the shard globs (which
    exist only after data/compress_data.py).
    """
    where = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{where}: cannot read config ({err.strerror})") from err
    except UnicodeDecodeError as err:
        line = err.object[: err.start].count(b"\n") + 1
        raise ConfigError(f"{where}: not UTF-8 text (byte {err.object[err.start]:#04x} on line {line}); save the "
                          "file as UTF-8") from None
    except yaml.YAMLError as err:  # one line: the position and the problem, not PyYAML's multi-line excerpt
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where}: not valid YAML{at} ({getattr(err, 'problem', None) or err})") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of sections (data, train, eval, ...)")
    for dotted, value in parse_overrides(overrides or []).items():
        _apply_override(raw, dotted, value, where)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation(err, where)) from None
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    _use_bundled_inputs(cfg)
    if check_files:
        _check_files(cfg, where, check_data)
    return cfg




def bundled(path: str | None) -> str | None:
    """A relative input path as given when it exists from the working directory, else the repository's
    bundled file of that name when that exists (so shipped configs run from any directory)."""
    if not path or os.path.isabs(path) or glob.glob(path) or os.path.exists(path):
        return path
    candidate = REPO_ROOT / path
    return str(candidate) if glob.glob(str(candidate)) or candidate.exists() else path


def _use_bundled_inputs(cfg: RunConfig) -> None:
    """Point the config's relative input paths (data, policy, tokenizer, eval files) at bundled files when
    they are not found from the working directory. Outputs (work_dir) stay relative to it."""
    d, e = cfg.data, cfg.eval
    d.data = {name: bundled(pattern) for name, pattern in d.data.items()}
    d.sample_policy_file, d.tokenizer_path = bundled(d.sample_policy_file), bundled(d.tokenizer_path)
    file_keys = [(e, method.dataset_key) for method in EVAL_METHODS.values()]
    file_keys += [(d, "reward_model_datasets"), (e, "test_reward_model_acc_files")]
    for section, key in file_keys:
        value = getattr(section, key)
        if isinstance(value, str):
            setattr(section, key, bundled(value))
        elif isinstance(value, list):
            setattr(section, key, [bundled(v) for v in value])
        elif isinstance(value, dict):
            setattr(section, key, {k: bundled(v) for k, v in value.items()})


def dump_config(cfg: RunConfig, path: str | Path, extra: dict | None = None) -> Path:
    """Write the resolved config (every default filled in) as YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = cfg.model_dump(mode="json")
    if extra:
        data["_run"] = extra
    return atomic_write(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


# keys of the original configs that this trainer accepts but does not need: (section, key, stages reading it)
COMPATIBILITY_KEYS = (("data", "num_sequences", ()), ("data", "split_by_shard", ()),
                      ("train", "downscale_weight", ("reward",)), ("data", "dataset_map_num_proc", ()))


def compatibility_keys_set(cfg: RunConfig) -> list[str]:
    """The compatibility-only keys this config sets that its stage ignores (each gets a one-line note)."""
    return [f"{section}.{key}" for section, key, readers in COMPATIBILITY_KEYS
            if getattr(getattr(cfg, section), key) not in (None, False) and cfg.stage_name() not in readers]


def require_model_source(cfg: RunConfig, model_config: str | None, where: str) -> None:
    """A run needs train.ckpt or --model_config; a missing --model_config file is an error too."""
    if model_config is None and not cfg.train.ckpt:
        raise ConfigError(f"{where}: key train.ckpt: null and no --model_config given; set one of them")
    if model_config is not None and not os.path.isfile(model_config):
        raise ConfigError(f"--model_config: '{model_config}' does not exist")
