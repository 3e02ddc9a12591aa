#!/usr/bin/env python
"""Summarise a finished `make demo`: one row per training stage (steps, first and last logged loss, the last
eval figures, output directory, plot), printed and written to work_dirs/demo_summary.md, and one figure with
a panel per stage (train loss, and the stage's eval figures on a second axis) in work_dirs/demo_summary.png.

  python scripts/demo_summary.py [--work-dirs work_dirs] [--output work_dirs/demo_summary.md]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's package, installed or not

from llms_trainer.io import atomic_write  # noqa: E402
from llms_trainer.metrics import metric_series, read_metrics  # noqa: E402

# (stage, work_dir name, the eval metrics worth a column)
STAGES = (("base pretraining", "tiny_demo", ("eval/nll/nats_per_char", "eval/nll/ppl", "eval/single_choice/acc")),
          ("continued pretraining", "tiny_cpt", ("eval/nll/nats_per_char", "eval/nll/ppl")),
          ("SFT", "tiny_sft", ("eval/chat_nll/loss",)),
          ("reward model", "tiny_demo_rm", ("eval/reward/accuracy",)),
          ("DPO", "tiny_dpo", ("eval/dpo/rewards/margins", "eval/dpo/rewards/accuracies")),
          ("GRPO", "tiny_grpo", ("eval/grpo/reward",)))
# stages whose loss says little: a logged training metric shown as "first → last" next to the evals
TRENDS = {"GRPO": "train/reward"}
TREND_POINTS = 3


def stage_row(name: str, work: Path, evals: tuple[str, ...]) -> str:
    metrics = work / "metrics.jsonl"
    if not metrics.is_file():
        return f"| {name} | – | – | – | not run | `{work}` | – |"
    rows = read_metrics(metrics)
    losses = [(r["step"], r["train/loss"]) for r in rows if isinstance(r.get("train/loss"), (int, float))]
    found = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("eval/") and isinstance(value, (int, float)):
                found[key] = value
    shown = [k for k in evals if k in found] or sorted(found)[:2]
    figures = [f"{k.removeprefix('eval/')} {found[k]:.3g}" for k in shown]
    trend = [r[TRENDS[name]] for r in rows if isinstance(r.get(TRENDS.get(name)), (int, float))]
    if trend:  # a noisy metric: the mean of its first and of its last TREND_POINTS logged values
        ends = trend[:TREND_POINTS], trend[-TREND_POINTS:]
        first, last = (sum(part) / len(part) for part in ends)
        figures.insert(0, f"{TRENDS[name]} {first:.3g} → {last:.3g}")
    figures = ", ".join(figures) or "–"
    plot = next(iter(sorted(work.glob("*.png"))), None)
    steps = losses[-1][0] if losses else 0
    first = f"{losses[0][1]:.3f}" if losses else "–"
    last = f"{losses[-1][1]:.3f}" if losses else "–"
    return f"| {name} | {steps} | {first} | {last} | {figures} | `{work}` | `{plot}` |"


def stages_figure(work_dirs: Path):
    """One panel per stage that ran: train/loss (left axis), its eval figures and trend (right axis)."""
    from matplotlib.figure import Figure

    ran = [(name, work_dirs / sub, evals) for name, sub, evals in STAGES if (work_dirs / sub / "metrics.jsonl").is_file()]
    figure = Figure(figsize=(4.5 * 3, 3.2 * max(1, -(-len(ran) // 3))), layout="constrained")
    axes = figure.subplots(max(1, -(-len(ran) // 3)), 3, squeeze=False).ravel()
    for ax, (name, work, evals) in zip(axes, ran, strict=False):
        series = metric_series(read_metrics(work / "metrics.jsonl"))
        steps, values = series.get("train/loss", ([], []))
        ax.plot(steps, values, color="tab:blue", linewidth=1.2, label="train/loss")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        right = ax.twinx()
        logged = [k for k in evals if series.get(k, ([], []))[0]][:1]  # the stage's main eval figure
        extra = logged + [k for k in (TRENDS.get(name),) if k and series.get(k, ([], []))[0]]
        for key, colour in zip(extra, ("tab:orange", "tab:green", "tab:red"), strict=False):
            right.plot(*series[key], color=colour, marker=".", linewidth=1.0, label=key)
        right.tick_params(labelsize=7)
        handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], fontsize=6)
    for ax in axes[len(ran):]:
        ax.set_visible(False)
    figure.suptitle("make demo: every stage")
    return figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dirs", type=Path, default=Path("work_dirs"), help="where the demo wrote its runs "
                        "(default: work_dirs)")
    parser.add_argument("--output", type=Path, default=None, help="default: WORK_DIRS/demo_summary.md")
    args = parser.parse_args(argv)
    lines = ["| stage | steps | first loss | last loss | last eval | output | plot |",
             "|---|---|---|---|---|---|---|"]
    lines += [stage_row(name, args.work_dirs / sub, evals) for name, sub, evals in STAGES]
    text = "\n".join(lines) + "\n"
    print(text)
    output = args.output or args.work_dirs / "demo_summary.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    png = io.BytesIO()
    stages_figure(args.work_dirs).savefig(png, format="png", dpi=100)
    atomic_write(output.with_suffix(".png"), png.getvalue())
    print(f"wrote {output} and {output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
