"""Throughput and model FLOP utilisation (MFU) of the training loop: a step clock that leaves evals and saves
out, and the FLOPs per trained token of a model.
"""

from __future__ import annotations

import time

import torch

from llms_trainer.model.load import count_parameters

# Dense bf16 peak FLOP/s by GPU name fragment, for MFU when train.peak_flops_per_device is not given.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
                   "L4": 121e12, "RTX 4090": 165e12}



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


class StepClock:
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
