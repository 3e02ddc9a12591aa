"""Training metrics: work_dir/metrics.jsonl, one PNG of curves, and accelerate trackers.

metrics.jsonl is append-only, one UTF-8 JSON line per `log` call: {"step": optimizer step, <name>: value,
..., "time": unix seconds}; non-finite values are written as null. `plot` draws one panel per metric name
(x = optimizer step) from this run's history: `start_at(step)` keeps the rows up to a resumed step (the
steps after the checkpoint are replayed and logged again), and a fresh run (step 0) moves an earlier run's
file to metrics.prev.jsonl, so curves of different runs never mix. Only the main process writes.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from llms_trainer.io import atomic_write

Series = dict[str, tuple[list[int], list[float]]]
_NOT_METRICS = ("step", "time")


def _clean(value: Any) -> float | None:
    """A float for JSON, or None for non-finite / non-numeric values."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_metrics(path: Path) -> list[dict]:
    """Lines of a metrics.jsonl; unreadable lines (e.g. cut off by a crash) are skipped with a warning."""
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{lineno}: skipping unreadable metrics line", stacklevel=2)
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    return rows


def _end_last_line(path: Path) -> None:
    """Finish a last line cut off by a crash, so the next append starts on a line of its own."""
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":
                fh.write(b"\n")


def metric_series(rows: list[dict]) -> Series:
    """{metric name: (steps, values)} sorted by step; non-finite values dropped, a re-logged step's
    later value wins. Every metric name that was ever logged gets an entry (possibly empty)."""
    by_name: dict[str, dict[int, float]] = {}
    for row in rows:
        for name, value in row.items():
            if name in _NOT_METRICS:
                continue
            points = by_name.setdefault(name, {})
            value = _clean(value)
            if value is None:
                points.pop(row["step"], None)
            else:
                points[row["step"]] = value
    return {name: (sorted(points), [points[s] for s in sorted(points)]) for name, points in by_name.items()}


def _is_loss(name: str) -> bool:
    return name == "train/loss" or (name.startswith("eval/") and name.endswith("/loss"))


# Panels in reading order: (title, does a metric belong to it); a metric goes to the first panel that takes it,
# the rest get a panel each (training statistics first, then evaluations), sorted by name.
PANELS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("loss (train, eval NLL)", _is_loss),
    ("eval accuracy", lambda n: n.startswith("eval/") and n.endswith("acc")),
    ("learning rate", lambda n: n == "train/lr"),
    ("grad norm", lambda n: n == "train/grad_norm"),
    ("tokens/s", lambda n: n == "train/tokens_per_s"),
    ("data share of tokens", lambda n: n.startswith("data/") and n.endswith("/share")),
    ("data epochs", lambda n: n.startswith("data/") and n.endswith("/epochs")),
)


def panel_plan(names: list[str]) -> list[tuple[str, list[str]]]:
    """Which metrics each panel draws, the loss first; empty panels are left out."""
    left = sorted(names)
    plan = []
    for title, takes in PANELS:
        mine = [n for n in left if takes(n)]
        left = [n for n in left if n not in mine]
        if mine:
            plan.append((title, mine))
    others = sorted(left, key=lambda n: (not n.startswith("train/"), n))
    return plan + [(n, [n]) for n in others]


def metrics_figure(series: Series, title: str = "") -> Figure:
    """One figure, a grid of panels (x = optimizer step): the loss with eval NLL overlaid first, then eval
    accuracies, lr, grad norm, throughput, data shares and epochs, then every other metric on its own."""
    plan = panel_plan(list(series))
    cols = max(1, min(3, len(plan)))
    rows = max(1, math.ceil(len(plan) / cols))
    figure = Figure(figsize=(4.5 * cols, 3.2 * rows), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for ax, (panel, names) in zip(axes, plan, strict=False):
        for name in names:
            steps, values = series[name]
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, linewidth=1.2, label=name)
        if len(names) > 1:
            ax.legend(fontsize=7)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(plan):]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title)
    return figure


class MetricsLogger:
    """Appends metrics to work_dir/metrics.jsonl, forwards them to accelerate trackers, and plots them."""

    def __init__(self, work_dir: str | Path, img_log_dir: str | Path | None, img_log_name: str,
                 accelerator: Any) -> None:
        self.path = Path(work_dir) / "metrics.jsonl"
        name = img_log_name if img_log_name.endswith(".png") else f"{img_log_name}.png"
        self.image_path = Path(img_log_dir if img_log_dir is not None else work_dir) / name
        self.accelerator = accelerator
        self.rows: list[dict] = []
        if accelerator.is_main_process and self.path.is_file():
            self.rows = read_metrics(self.path)
            _end_last_line(self.path)

    def start_at(self, step: int) -> None:
        """Begin logging at optimizer step `step`: keep the history up to it (a resume) or none (a fresh run)."""
        if not self.accelerator.is_main_process or not self.path.is_file():
            return
        if step == 0:
            os.replace(self.path, self.path.with_name("metrics.prev.jsonl"))
            self.rows = []
            return
        self.rows = [row for row in self.rows if row["step"] <= step]
        atomic_write(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows).encode())

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append {"step", **metrics, "time"} to metrics.jsonl and send the finite values to trackers."""
        cleaned = {name: _clean(value) for name, value in metrics.items() if name not in _NOT_METRICS}
        self.accelerator.log({k: v for k, v in cleaned.items() if v is not None}, step=step)
        if not self.accelerator.is_main_process:
            return
        row = {"step": int(step), **cleaned, "time": round(time.time(), 3)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rows.append(row)

    def plot(self) -> Path | None:
        """Redraw the PNG (written to a temp file, then renamed); returns its path on the main process."""
        if not self.accelerator.is_main_process or not self.rows:
            return None
        figure = metrics_figure(metric_series(self.rows), title=self.image_path.stem)
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=100)
        return atomic_write(self.image_path, png.getvalue())
