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
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from llms_trainer.config import RunConfig
from llms_trainer.train import checkpoint as ckpt
from llms_trainer.train.embedding_warmup import NewRowsOnly, embedding_parameters
from llms_trainer.train.errors import USER_ERRORS, NonFiniteError, stop_if_any, stop_together
from llms_trainer.train.setup import configure_deepspeed, make_optimizer, make_scheduler, set_schedule_step
from llms_trainer.train.stages import Stage, StageContext, StageRun, Stats
from llms_trainer.train.throughput import StepClock, flops_per_token, peak_flops

MAX_EMPTY_STEPS_IN_A_ROW = 8  # drawn steps without a loss item that are skipped before a run stops


@dataclass
class TrainResult:
    step: int                                                   # optimizer steps done in total
    losses: dict[int, float] = field(default_factory=dict)      # step → mean loss, steps run this call
    last_checkpoint: Path | None = None
    stop_reason: str = "num_training_steps reached"
    empty_steps: int = 0                                        # drawn steps without a loss item, skipped


def _reduce(accelerator, values: list[float]) -> list[float]:
    """Sum of `values` over all processes (no communication on one process)."""
    if accelerator.num_processes == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(tensor, reduction="sum").tolist()


def _to_device(batch: dict, device) -> dict:
    """Tensors to the device; other fields (texts, ids for the stage) pass through."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _fetch_step(run: StageRun, n: int, accelerator, clock: StepClock) -> tuple[list[dict], float, float, bool]:
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
    clock, interval, last_plot, grad_norm, lr_used = StepClock(), _Interval(), time.time(), None, t.lr
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
