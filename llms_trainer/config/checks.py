"""The cross-key checks of a validated config: files exist, combinations are possible, the stage exists and
only its own sections and keys are set, then the stage's own checks (`StageSection.check`). Each failure is
one ConfigError `CFG: key a.b: problem`."""

from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import Mapping

from llms_trainer.config.schema import (
    SHARED,
    TRACKERS,
    ConfigError,
    Fail,
    RunConfig,
    StageSection,
    TrainConfig,
)
from llms_trainer.data.shards import dataset_files
from llms_trainer.evaluation.methods import EVAL_METHODS


def _looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or os.path.exists(path) or path.count("/") > 1


def check_config(cfg: RunConfig, where: str, stages: Mapping[str, StageSection | str],
                 check_data: bool = True) -> None:
    """Missing files and impossible combinations, each named by its key (`check_data`: the shard globs too)."""
    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"{where}: key {key}: {problem}")

    d, t, e = cfg.data, cfg.train, cfg.eval
    _check_stage(cfg, stages, fail)
    stage = cfg.stage_section()
    if stage.reads_sources and not d.data:
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
    if t.num_training_steps is None and not stage.steps_from_epochs:
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
    if t.train_and_eval and not e.eval_methods and not (stage.evaluates and stage.evaluates(cfg)):
        fail("eval.eval_methods", "empty while train.train_and_eval is true; list methods or set it false")


def _check_embedding_warmup(t: TrainConfig, fail: Fail) -> None:
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


def _check_kernels(t: TrainConfig, fail: Fail) -> None:
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


def _check_stage(cfg: RunConfig, stages: Mapping[str, StageSection | str], fail: Fail) -> None:
    """The stage exists in this install, only its own section and keys are set, and its own checks pass."""
    name = cfg.stage_name()
    key = "stage" if cfg.stage else "data.mode"
    if name not in stages:
        fail(key, f"'{name}' is not a stage; stages: {', '.join(stages)}")
    if isinstance(stages[name], str):
        available = [n for n, s in stages.items() if isinstance(s, StageSection)]
        fail(key, f"{stages[name]}; stages available here: {', '.join(available)}")
    for other, section in stages.items():
        if other == name or not isinstance(section, StageSection):
            continue
        if section.model is not None and getattr(cfg, other) is not None:
            fail(other, f"options of the {other} stage, but this run's stage is {name}: remove the section "
                 f"or set stage: {other}")
        for shared in SHARED:
            for field in section.shared_keys.get(shared, {}):
                if getattr(getattr(cfg, shared), field) not in (None, False):
                    fail(f"{shared}.{field}", f"{section.foreign}; this run's stage is {name}: remove it")
    if stages[name].check is not None:
        stages[name].check(cfg, fail)
