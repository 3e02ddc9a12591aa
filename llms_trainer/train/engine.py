"""The one training loop, on accelerate (CPU, DDP, DeepSpeed ZeRO 1/2/3).

One optimizer step = `gradient_accumulation_steps` micro-batches on every process. The loss of a step is the
mean over all its target tokens on all processes: each micro-batch's summed loss is scaled by
`world × accumulation / tokens_in_step`, so gradient accumulation and data parallelism give the same update
as one big batch. Gradients are clipped before the step (DeepSpeed: by its own `gradient_clipping`). The
learning-rate schedule is transformers' `get_scheduler(train.lr_scheduler_type)` (default warmup then
cosine to `min_lr`); it is a function of the step, so a resume continues it exactly and applies a changed
`train.lr` or schedule from the resumed step. `train/lr` logs the optimizer's own lr of each step; all
intervals count optimizer steps. A non-finite loss (any process) or gradient norm stops every process
before the update; weights with NaN/inf are never saved, so the last checkpoint stays good.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
from tqdm.auto import tqdm

from llms_trainer.config import ConfigError, RunConfig
from llms_trainer.io import zero_stage
from llms_trainer.model.load import count_parameters
from llms_trainer.train import checkpoint as ckpt
from llms_trainer.train.embedding_warmup import NewRowsOnly, embedding_parameters, with_embedding_warmup
from llms_trainer.train.errors import USER_ERRORS, NonFiniteError, stop_if_any, stop_together
from llms_trainer.train.stages import Stage, StageContext, StageRun, Stats

BETAS = (0.9, 0.95)
# Dense bf16 peak FLOP/s by GPU name fragment, for MFU when train.peak_flops_per_device is not given.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
                   "L4": 121e12, "RTX 4090": 165e12}


MAX_EMPTY_STEPS_IN_A_ROW = 8  # drawn steps without a loss item that are skipped before a run stops


@dataclass
class TrainResult:
    step: int                                                   # optimizer steps done in total
    losses: dict[int, float] = field(default_factory=dict)      # step → mean loss, steps run this call
    last_checkpoint: Path | None = None
    stop_reason: str = "num_training_steps reached"
    empty_steps: int = 0                                        # drawn steps without a loss item, skipped


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


def flops_per_token(model) -> tuple[float, float]:
    """(6·N, 12·layers·hidden): FLOPs per trained token are 6·N + 12·layers·hidden·seq (forward + backward)."""
    config = getattr(model, "config", None)
    n_params = count_parameters(model)[1]
    layers, hidden = getattr(config, "num_hidden_layers", 0), getattr(config, "hidden_size", 0)
    return 6 * n_params, 12 * layers * hidden


def peak_flops(train, precision: str) -> float | None:
    if train.peak_flops_per_device:
        return train.peak_flops_per_device
    if torch.cuda.is_available() and precision in ("bf16", "fp16"):
        name = torch.cuda.get_device_name()
        return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return None


class _StepClock:
    """Tokens, rows, wall time and time waiting for data since the last log, excluding evals and saves."""

    def __init__(self):
        self.start, self.paused, self.waited, self.tokens, self.rows = time.perf_counter(), 0.0, 0.0, 0, 0

    def pause(self, seconds: float) -> None:
        self.paused += seconds

    def wait(self, seconds: float) -> None:
        """Time spent waiting for the next step's micro-batches (part of the step time)."""
        self.waited += seconds

    def add(self, tokens: int, rows: int) -> None:
        self.tokens += tokens
        self.rows += rows

    def rate(self) -> tuple[float, float, float]:
        """(tokens per second, mean tokens per row, share of the time spent waiting for data) since the last
        call (this process)."""
        elapsed = max(1e-9, time.perf_counter() - self.start - self.paused)
        rate, per_row = self.tokens / elapsed, self.tokens / max(1, self.rows)
        waiting = min(1.0, self.waited / elapsed)
        self.start, self.paused, self.waited, self.tokens, self.rows = time.perf_counter(), 0.0, 0.0, 0, 0
        return rate, per_row, waiting


def _reduce(accelerator, values: list[float]) -> list[float]:
    """Sum of `values` over all processes (no communication on one process)."""
    if accelerator.num_processes == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(tensor, reduction="sum").tolist()


def _to_device(batch: dict, device) -> dict:
    """Tensors to the device; other fields (texts, ids for the stage) pass through."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _fetch_step(run: StageRun, n: int, accelerator, clock: _StepClock) -> tuple[list[dict], float, float, bool]:
    """(micro-batches, loss items, tokens, short) of the next step, agreed over processes.

    The time this process waits for its micro-batches goes to `clock`. A data error on any process (a corrupt
    shard met mid-run) stops every process here, together.
    """
    error, micro = None, []
    started = time.perf_counter()
    try:
        micro = run.next_step(n)
    except USER_ERRORS as err:
        error = err
    clock.wait(time.perf_counter() - started)
    items, tokens, short, failed = _reduce(accelerator, [
        sum(run.loss_divisor(b) for b in micro), sum(run.count_tokens(b) for b in micro),
        float(len(micro) < n), float(error is not None)])
    stop_if_any(accelerator, error if failed else None)
    return micro, items, tokens, bool(short)


def _as_tensor(value, device) -> torch.Tensor:
    return (value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))).to(device,
                                                                                                    torch.float64)


def _add_step_sums(sums: dict[str, torch.Tensor], loss: torch.Tensor, stats: Stats, device) -> None:
    """Accumulate the micro-batch's loss and statistics ((sum, count) or (sum, sum of squares, count)) on the
    device (no host sync)."""
    sums["loss"] = sums.get("loss", 0) + loss.detach().double()
    for name, values in stats.items():
        row = torch.stack([_as_tensor(v, device).reshape(()) for v in values])
        sums[name] = sums.get(name, 0) + row


def _reduce_step_sums(sums: dict[str, torch.Tensor], accelerator) -> dict[str, list[float]]:
    """One all-reduce (and one host sync) of the step's loss and statistics over all processes."""
    names = sorted(sums)
    flat = torch.cat([sums[n].reshape(-1) for n in names])
    if accelerator.num_processes > 1:
        flat = accelerator.reduce(flat, reduction="sum")
    values, out, i = flat.tolist(), {}, 0
    for name in names:
        width = sums[name].numel()
        out[name], i = values[i:i + width], i + width
    return out


def optimizer_step(run: StageRun, model, micro: list[dict], items: float, accelerator, optimizer,
                   trainable: list, max_grad_norm: float | None, step: int, last_checkpoint
                   ) -> tuple[float, dict[str, float], object]:
    """One optimizer step over this process's micro-batches: (mean loss, statistics, grad norm), all processes.

    `items` is the number of loss items in the whole step on all processes. Loss and statistics are summed
    on the device and reduced once per step, before the last backward: DeepSpeed steps inside that backward,
    so a non-finite loss never reaches the weights.
    """
    scale = accelerator.num_processes * len(micro) / items  # undoes accelerate's / accumulation and DDP's mean
    sums: dict[str, torch.Tensor] = {}
    grad_norm, reduced = None, {}
    for i, batch in enumerate(micro):
        batch = _to_device(batch, accelerator.device)
        with accelerator.accumulate(model):
            loss, stats = run.loss(model, batch)
            _add_step_sums(sums, loss, stats, accelerator.device)
            if i == len(micro) - 1:
                reduced = _reduce_step_sums(sums, accelerator)
                if not math.isfinite(reduced["loss"][0]):
                    raise NonFiniteError(
                        f"loss is {reduced['loss'][0]} at step {step + 1} (on at least one process); stopped "
                        f"every process before the update. Last good checkpoint: {last_checkpoint or 'none'}. "
                        "Lower train.lr, check the data, or resume from that checkpoint.")
            accelerator.backward(loss * scale)
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(trainable, max_grad_norm or float("inf"))
    if grad_norm is None and ckpt.is_deepspeed(accelerator):
        grad_norm = model.get_global_grad_norm()  # DeepSpeed has already stepped: its weights are checked on save
    if grad_norm is not None and not math.isfinite(float(grad_norm)):
        raise NonFiniteError(
            f"gradient norm is {float(grad_norm)} at step {step + 1}; stopped every process before saving "
            f"such weights. Last good checkpoint: {last_checkpoint or 'none'}. Lower train.lr or check the data.")
    optimizer.step()  # the last micro-batch ended at a sync boundary, so this steps (a no-op under DeepSpeed)
    optimizer.zero_grad(set_to_none=True)
    return reduced["loss"][0] / items, _step_stats(reduced), grad_norm


def _step_stats(reduced: dict[str, list[float]]) -> dict[str, float]:
    """Σsum / Σcount per statistic; one with a sum of squares also gives `<name>_std` (population std)."""
    stats = {}
    for name, v in ((n, v) for n, v in reduced.items() if n != "loss" and v[-1]):
        stats[name] = v[0] / v[-1]
        if len(v) == 3:
            stats[f"{name}_std"] = math.sqrt(max(0.0, v[1] / v[-1] - stats[name] ** 2))
    return stats


class _Interval:
    """Means over the steps of one log interval: loss and each statistic."""

    def __init__(self):
        self.values: dict[str, list[float]] = {}

    def add(self, loss: float, stats: dict[str, float]) -> None:
        for name, value in {"loss": loss, **stats}.items():
            self.values.setdefault(name, []).append(value)

    def means(self) -> dict[str, float]:
        means = {f"train/{n}": sum(v) / len(v) for n, v in self.values.items()}
        self.values.clear()
        return means


def train(cfg: RunConfig, stage: Stage, model, tokenizer, accelerator, data, evals, logger,
          resume_from: Path | None = None, lineage: str | None = None,
          model_config: str | None = None) -> TrainResult:
    """Train `model` until num_training_steps (or the data ends); every process calls this.

    `data` is what the stage's build_train_data returned; `lineage` the run's lineage id, stored in every
    checkpoint (see llms_trainer.train.workdir).
    """
    t = cfg.train
    first = embedding_parameters(model) if t.embedding_warmup_steps else None
    optimizer = make_optimizer(model, t.lr, t.weight_decay, first)
    scheduler = make_scheduler(optimizer, t)  # stepped here from the step count: never prepared or saved
    configure_deepspeed(accelerator, t)
    model, prepared_optimizer = accelerator.prepare(model, optimizer)
    run = stage.start(cfg, StageContext(model, tokenizer, accelerator, data, model_config))
    step = tokens_seen = 0
    if resume_from is not None:
        with stop_together(accelerator):
            saved = ckpt.restore_training_state(accelerator, resume_from, model, prepared_optimizer, run)
        step, tokens_seen = saved["step"], saved["tokens_seen"]
        accelerator.print(f"resumed from {resume_from} at step {step}")
    set_schedule_step(scheduler, step)
    new_rows_only = NewRowsOnly(first or [], t.embedding_warmup_rows_from, t.embedding_warmup_steps)
    logger.start_at(step)
    result = TrainResult(step=step, last_checkpoint=resume_from)
    last_saved, last_eval, save_due = (step if resume_from is not None else -1), -1, False
    trainable = [p for p in model.parameters() if p.requires_grad]
    flops_param, flops_attn = flops_per_token(accelerator.unwrap_model(model))
    peak = peak_flops(t, accelerator.mixed_precision)
    clock, interval, last_plot, grad_norm, lr_used = _StepClock(), _Interval(), time.time(), None, t.lr
    bar = tqdm(total=t.num_training_steps, initial=step, disable=not accelerator.is_local_main_process,
               desc="train", dynamic_ncols=True)

    def say(message: str) -> None:
        if accelerator.is_main_process:
            bar.write(message)

    def log_interval() -> None:
        tokens_per_s, row_length, data_wait = clock.rate()
        metrics = {**interval.means(), "train/lr": lr_used, "train/tokens_per_s": tokens_per_s,
                   "train/tokens_seen": tokens_seen, "train/data_wait_fraction": data_wait}
        if grad_norm is not None:
            metrics["train/grad_norm"] = float(grad_norm)
        if peak:
            flops = flops_param + flops_attn * row_length
            metrics["train/mfu"] = tokens_per_s * flops / (peak * accelerator.num_processes)
        metrics.update(run.report())
        logger.log(step, metrics)
        bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", lr=f"{metrics['train/lr']:.2e}")

    def run_evals() -> None:
        started = time.perf_counter()
        metrics = {}
        for evaluate in evals:
            metrics.update(evaluate(model, step))
        model.train()
        logger.log(step, metrics)
        logger.plot()
        say(f"step {step} eval: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        clock.pause(time.perf_counter() - started)

    def save() -> None:
        started = time.perf_counter()
        state = {"step": step, "tokens_seen": tokens_seen, "lineage": lineage, "config": cfg.model_dump(mode="json")}
        try:
            path = ckpt.save_checkpoint(accelerator, model, tokenizer, prepared_optimizer, run, state,
                                        cfg.work_dir, t.save_total_limit)
        except NonFiniteError as err:
            raise NonFiniteError(f"{err}. Last good checkpoint: {result.last_checkpoint or 'none'}. Lower "
                                 "train.lr or check the data, and resume from that checkpoint.") from None
        result.last_checkpoint = path
        say(f"step {step}: saved {result.last_checkpoint}")
        clock.pause(time.perf_counter() - started)

    empty_in_a_row = 0
    try:
        model.train()
        while step < t.num_training_steps:
            micro, items, tokens, short = _fetch_step(run, t.gradient_accumulation_steps, accelerator, clock)
            if short:  # every process stops together
                result.stop_reason = "training data exhausted (train.num_training_epochs)"
                break
            if items == 0:  # nothing to learn from (e.g. every GRPO completion truncated and masked): no update
                result.empty_steps, empty_in_a_row = result.empty_steps + 1, empty_in_a_row + 1
                if empty_in_a_row == MAX_EMPTY_STEPS_IN_A_ROW:
                    result.stop_reason = (f"{empty_in_a_row} steps in a row without any loss item (check "
                                          "data.seq_length; GRPO: grpo.max_new_tokens when "
                                          "grpo.mask_truncated_completions is true)")
                    break
                continue
            empty_in_a_row = 0
            lr_used = optimizer.param_groups[0]["lr"]
            new_rows_only.update(step)
            loss, stats, grad_norm = optimizer_step(run, model, micro, items, accelerator, prepared_optimizer,
                                                    trainable, t.max_grad_norm, step, result.last_checkpoint)
            step += 1
            set_schedule_step(scheduler, step)
            tokens_seen += int(tokens)
            clock.add(int(tokens), accelerator.num_processes * sum(len(b["input_ids"]) for b in micro
                                                                   if "input_ids" in b))
            result.losses[step] = loss
            interval.add(loss, stats)
            bar.update(1)
            if step % cfg.log_interval == 0:
                log_interval()
                if time.time() - last_plot > 60:
                    logger.plot()
                    last_plot = time.time()
            if t.train_and_eval and step % cfg.eval_interval == 0:
                run_evals()
                last_eval = step
            save_due = save_due or (step % cfg.save_interval == 0 and step < t.num_training_steps)
            if save_due and run.can_save():  # a rollout stage saves between rollouts only
                save()
                last_saved, save_due = step, False
        result.step = step
        if interval.values:
            log_interval()
        if t.train_and_eval and evals and last_eval != step:
            run_evals()
        if last_saved != step:
            save()
        logger.plot()
    finally:
        bar.close()  # before any error line, which must stay the last line
    skipped = f"{result.empty_steps} steps without a loss item skipped; " if result.empty_steps else ""
    accelerator.print(f"done: {step} optimizer steps, {tokens_seen} tokens; {result.stop_reason}; {skipped}"
                      f"checkpoint {result.last_checkpoint}")
    return result
