"""A whole training run from a config file: what `train_llms.py` calls on every process."""

from __future__ import annotations

import os
from pathlib import Path

from llms_trainer.config import (
    ConfigError,
    RunConfig,
    compatibility_keys_set,
    dump_config,
    require_model_source,
)
from llms_trainer.model.load import (
    count_parameters,
    load_tokenizer,
    maybe_compile,
    prepare_for_training,
    zero3_init_as_configured,
)
from llms_trainer.train import engine, setup, workdir
from llms_trainer.train.checkpoint import check_resumable, resolve_resume
from llms_trainer.train.errors import stop_together
from llms_trainer.train.stages import Stage, StageNotAvailable, get_stage, load_config


def stage_for(cfg: RunConfig, where: str) -> Stage:
    """The registered stage this config runs (config validation has checked that it exists)."""
    try:
        return get_stage(cfg.stage_name())
    except (KeyError, StageNotAvailable) as err:
        raise ConfigError(f"{where}: key stage: {err}") from err


def run(config_path: str | Path, overrides: list[str] | None = None, model_config: str | None = None,
        logger=None, cfg: RunConfig | None = None) -> engine.TrainResult:
    """Validate, build data → tokenizer → model, train. Every process calls this.

    `cfg`: the config already loaded and validated from `config_path` and `overrides` (the command line
    passes it, so a run reads its YAML once); loaded here when not given.
    Nothing in work_dir changes until every process has validated its part (config, work_dir, data, evals,
    model); a user error anywhere stops every process together (llms_trainer.train.errors). `logger` (with
    `start_at(step)`, `log(step, metrics)` and `plot()`) defaults to llms_trainer.metrics.MetricsLogger.
    """
    from accelerate.utils import set_seed

    silence_expected_noise()
    where = str(config_path)
    if cfg is None:
        cfg = load_config(config_path, overrides)
    require_model_source(cfg, model_config, where)
    stage = stage_for(cfg, where)
    accelerator = setup.build_accelerator(cfg)
    set_seed(cfg.train.seed)
    lock = None
    try:
        with stop_together(accelerator):
            resume_from = resolve_resume(cfg.train.resume, cfg.work_dir)
            if resume_from is not None:
                check_resumable(resume_from, accelerator)
            if accelerator.is_main_process:
                lock = workdir.lock_work_dir(cfg.work_dir)
                lineage, to_clear = workdir.plan_lineage(cfg.work_dir, resume_from, cfg.train.overwrite_work_dir)
        with stop_together(accelerator):
            cfg, tokenizer, loader, evals, model = _build(cfg, stage, accelerator, resume_from, model_config, where)
        if accelerator.is_main_process:  # validated everywhere: now the run may change work_dir
            workdir.clear(to_clear, cfg.work_dir)
            if resume_from is None:
                workdir.set_aside_outputs(cfg.work_dir)
            dump_config(cfg, Path(cfg.work_dir) / "config.yaml",
                        extra={"config_file": where, "overrides": list(overrides or []),
                               "model_config": model_config, "num_processes": accelerator.num_processes})
        lineage = _broadcast_text(accelerator, lineage if accelerator.is_main_process else "")
        trainable, total = count_parameters(model)
        accelerator.print(f"model: {total:,} parameters, {trainable:,} trained; stage {stage.name}; "
                          f"{accelerator.num_processes} process(es); work_dir {cfg.work_dir}")
        if logger is None:
            from llms_trainer.metrics import MetricsLogger

            logger = MetricsLogger(cfg.work_dir, cfg.train.img_log_dir, cfg.train.img_log_name, accelerator)
        if cfg.train.log_with:
            accelerator.init_trackers(Path(cfg.work_dir).name, config=_flat(cfg.model_dump(mode="json")))
        return engine.train(cfg, stage, model, tokenizer, accelerator, loader, evals, logger, resume_from,
                            lineage, model_config)
    finally:
        accelerator.end_training()  # also after a setup error: a live gloo group can abort the exit
        if lock is not None:
            lock.close()


def _build(cfg: RunConfig, stage: Stage, accelerator, resume_from: Path | None, model_config: str | None,
           where: str) -> tuple:
    """(config with the stage's derived train settings, tokenizer, loader, evals, model) of a run; raises user
    errors (ConfigError, ShardError, ...)."""
    from llms_trainer.evaluation import EvalDataError

    tokenizer = load_tokenizer(str(resume_from) if resume_from else (cfg.data.tokenizer_path or cfg.train.ckpt))
    loader = stage.build_train_data(cfg, tokenizer, accelerator)
    cfg = with_derived_train(cfg, stage, loader)
    try:
        evals = stage.build_evals(cfg, tokenizer, accelerator, loader)
    except EvalDataError as err:
        raise ConfigError(f"{where}: key eval: {err}") from err
    use_adapter = resume_from is not None and cfg.train.use_lora
    with zero3_init_as_configured(accelerator):
        model = stage.build_model(cfg, tokenizer, model_config,
                                  weights_dir=resume_from if resume_from is not None and not use_adapter else None)
    model = prepare_for_training(model, cfg.train, adapter_dir=resume_from / "adapter" if use_adapter else None)
    model = maybe_compile(model, cfg.train, accelerator)
    for key in compatibility_keys_set(cfg):
        accelerator.print(f"note: {key} is accepted for compatibility and has no effect in this trainer")
    return cfg, tokenizer, loader, evals, model


def with_derived_train(cfg: RunConfig, stage: Stage, data) -> RunConfig:
    """A copy of `cfg` with the train settings the stage derived from its data (e.g. steps from epochs)."""
    derived = stage.derive_train(cfg, data) if stage.derive_train is not None else {}
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=derived)}) if derived else cfg


def silence_expected_noise() -> None:
    """Drop messages every CPU run prints that say nothing actionable; real warnings stay."""
    import warnings

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else DeepSpeed warns "Setting accelerator to CPU"
    for message in (r"`torch.distributed.all_gather_into_tensor` is deprecated",  # inside DeepSpeed ZeRO
                    r"`torch.distributed.reduce_scatter_tensor` is deprecated",
                    r"`is_gradient_checkpointing` is deprecated"):  # inside transformers/peft
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


def _broadcast_text(accelerator, text: str) -> str:
    """The main process's `text` on every process."""
    if accelerator.num_processes == 1:
        return text
    from accelerate.utils import broadcast_object_list

    box = [text]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _flat(tree: dict, prefix: str = "") -> dict:
    """Nested config → {"a.b": scalar} for trackers (lists and None as strings)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out
