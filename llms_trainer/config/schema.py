"""The schema of a training YAML: the shared sections (data, train, eval, top level) and how a stage adds its own.

A stage declares a `StageSection` (its `<stage>:` section model, its checks, the keys it adds to the shared
sections and a few facts the cross-key checks need); `run_config_model(stages)` assembles the `RunConfig`
class of a registry of them. Intervals and step counts are in optimizer steps (one step =
`gradient_accumulation_steps` micro-batches on every process).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from llms_trainer.evaluation.methods import EVAL_ALIASES, EVAL_METHODS
from llms_trainer.paths import Datasets

# accelerate tracker name → module that must import for it to work
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "aim": "aim", "comet_ml": "comet_ml",
            "mlflow": "mlflow", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio"}
SHARED = ("data", "train", "eval")  # the sections every stage reads


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False, allow_inf_nan=False)


Fail = Callable[[str, str], None]  # fail(key, problem) raises the ConfigError naming the key


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
    max_new_tokens: int = Field(32, ge=1, description="generation_eval: tokens generated per prompt")
    few_shot_prefix: str = Field("", description="single_choice_eval: text put before every question")
    batch_size: int = Field(8, ge=1, description="eval rows per forward, per process")

    def methods(self) -> list[str]:
        """eval_methods with old names mapped to the current ones."""
        return [EVAL_ALIASES.get(m, m) for m in self.eval_methods]


@dataclass(frozen=True)
class StageSection:
    """What a stage declares about its config (registered with the stage; read by loading and the checks).

    `model`: its `<stage>:` section (None: no section); `check(cfg, fail)`: its own cross-key checks;
    `shared_keys`: keys it adds to the shared sections, {section: {key: (type, Field)}}, that only it reads
    (another stage setting them is an error), `foreign`: what that error says about them; `reads_sources`:
    it trains on data.data; `steps_from_epochs`: train.num_training_steps may come from num_training_epochs;
    `chat`: its prompts go through the chat format; `evaluates(cfg)`: it has held-out evals of its own, so
    train_and_eval needs no eval_methods.
    """

    model: type[Section] | None = None
    check: Callable[[Any, Fail], None] | None = None
    shared_keys: Mapping[str, Mapping[str, tuple[Any, Any]]] = field(default_factory=dict)
    foreign: str = ""
    reads_sources: bool = False
    steps_from_epochs: bool = False
    chat: bool = False
    evaluates: Callable[[Any], bool] | None = None


class RunConfig(Section):
    """The top-level keys; `run_config_model` adds the stages' sections and keys."""

    stages_: ClassVar[dict[str, StageSection]] = {}  # the registry this class was assembled from

    stage: str | None = Field(None, description="the stage to run (default: data.mode; train_reward_model.py and "
                              "train_rl.py set it)")
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

    def stage_section(self) -> StageSection:
        """What this config's stage declares about its config."""
        return self.stages_[self.stage_name()]


_MODELS: dict[tuple, type[RunConfig]] = {}  # one class per registry, so configs of one registry compare equal


def run_config_model(stages: Mapping[str, StageSection]) -> type[RunConfig]:
    """The RunConfig class of a stage registry: `stage` naming them, each stage's section (None unless given;
    after the top-level keys) and the shared sections extended by the keys stages add to them (after the
    shared keys, in registry order)."""
    key = tuple((name, id(stage)) for name, stage in stages.items())
    if key not in _MODELS:
        _MODELS[key] = _assemble(stages)
    return _MODELS[key]


def _assemble(stages: Mapping[str, StageSection]) -> type[RunConfig]:
    fields: dict[str, Any] = {
        "stage": (str | None, Field(None, description=f"the stage to run: {', '.join(stages)} (default: data.mode; "
                                    "train_reward_model.py and train_rl.py set it)"))}
    for name in SHARED:
        added = {key: spec for stage in stages.values() for key, spec in stage.shared_keys.get(name, {}).items()}
        if added:
            info = RunConfig.model_fields[name]
            extended = create_model(info.annotation.__name__, __base__=info.annotation, **added)
            default = {"default_factory": extended} if info.default_factory else {}
            fields[name] = (extended, Field(description=info.description, **default))
    for name, stage in stages.items():
        if stage.model is not None:
            fields[name] = (stage.model | None, Field(None, description=f"options of the {name} stage"))
    model = create_model("RunConfig", __base__=RunConfig, **fields)
    model.stages_ = dict(stages)
    return model
