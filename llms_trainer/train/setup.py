"""What a run sets up before the loop: the accelerator (CPU, DDP, DeepSpeed), the optimizer, the learning-rate
schedule (a function of the step, re-applied after a resume) and the DeepSpeed settings accelerate cannot infer.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch

from llms_trainer.config import ConfigError, RunConfig
from llms_trainer.io import zero_stage
from llms_trainer.train.embedding_warmup import with_embedding_warmup

BETAS = (0.9, 0.95)


def build_accelerator(cfg: RunConfig):
    """Accelerator for this run: gloo on CPU (DeepSpeed too), precision from train.mixed_precision."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    precision = cfg.train.mixed_precision
    if precision == "auto":
        bf16_gpu = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        precision = os.environ.get("ACCELERATE_MIXED_PRECISION") or ("bf16" if bf16_gpu else "no")
    handlers, force_cpu = [], False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # Several CPU processes. DDP: accelerate only goes distributed when told cpu=True (else every process
        # trains alone). DeepSpeed: cpu=True would silently fall back to DDP, so name the gloo backend instead.
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            handlers.append(InitProcessGroupKwargs(backend="gloo", timeout=timedelta(hours=1)))
        else:
            force_cpu = True
    return Accelerator(
        cpu=force_cpu, gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        mixed_precision=precision, log_with=cfg.train.log_with or None, project_dir=cfg.work_dir,
        step_scheduler_with_optimizer=False, kwargs_handlers=handlers)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                   first: list[torch.nn.Parameter] | None = None) -> torch.optim.AdamW:
    """AdamW(0.9, 0.95); no weight decay on 1-D parameters (every norm, the final one included, and biases).

    `first` (2-D parameters) get a param group of their own, the first (the embedding warm-up's). The fused
    kernel (CPU and CUDA) is used where the parameters allow it: same update, one kernel per step.
    """
    first = first or []
    params = [p for p in model.parameters() if p.requires_grad]
    rest = [p for p in params if all(p is not f for f in first)]
    groups = [{"params": first, "weight_decay": weight_decay},
              {"params": [p for p in rest if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    fusable = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
                  for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS, fused=fusable or None)


def make_scheduler(optimizer, train) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' scheduler named by train.lr_scheduler_type (a LambdaLR: lr = train.lr · f(step)), after
    train.embedding_warmup_steps when set (llms_trainer.train.embedding_warmup)."""
    from transformers import get_scheduler

    warmup = train.embedding_warmup_steps
    kinds = {"cosine_with_min_lr": {"min_lr": train.min_lr},
             "warmup_stable_decay": {"num_decay_steps": train.num_decay_steps or max(1, train.num_training_steps // 10),
                                     "min_lr_ratio": train.min_lr / train.lr}}
    scheduler = get_scheduler(train.lr_scheduler_type, optimizer, num_warmup_steps=train.num_warmup_steps,
                              num_training_steps=train.num_training_steps - warmup,
                              scheduler_specific_kwargs=kinds.get(train.lr_scheduler_type))
    return with_embedding_warmup(scheduler, train)


def set_schedule_step(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Put the schedule (and its optimizer's lr) at `step` optimizer steps done, from this run's config."""
    scheduler.last_epoch = step
    lrs = [base * factor(step) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, lr, base in zip(scheduler.optimizer.param_groups, lrs, scheduler.base_lrs, strict=True):
        group["lr"], group["initial_lr"] = lr, base
    scheduler._last_lr = lrs


def configure_deepspeed(accelerator, train) -> None:
    """Fill the DeepSpeed config that accelerate cannot infer (no dataloader is prepared)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = train.train_batch_size
    ds["gradient_accumulation_steps"] = train.gradient_accumulation_steps
    accelerator.gradient_accumulation_steps = train.gradient_accumulation_steps  # accelerate read the YAML's
    ds["train_batch_size"] = train.train_batch_size * train.gradient_accumulation_steps * accelerator.num_processes
    ds["gradient_clipping"] = train.max_grad_norm or 0.0
    zero = ds.setdefault("zero_optimization", {})
    if zero_stage(accelerator) == 3:
        if train.use_lora:
            raise ConfigError("key train.use_lora: LoRA under ZeRO-3 is not supported; use a ZeRO-1/2 accelerate config")
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    offload = zero.get("offload_optimizer", {}).get("device", "none")
    if offload not in (None, "none") and not torch.cuda.is_available():
        ds["zero_force_ds_cpu_optimizer"] = False  # CPU-only: keep torch AdamW (no compiled cpu_adam op)
