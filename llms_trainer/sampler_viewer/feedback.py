"""Training feedback: what a pretraining run's mixture did, per source, read from its work_dir.

A run writes `config.yaml` (the resolved config: the sources and the policy file) and `metrics.jsonl`:
`train/source/<name>/loss` and `…/token_share` every log interval, `train/tokens_seen`, and with
`eval.source_holdout_records` the held-out `eval/source/<name>/nats_per_char` every eval. From them, per
source: the policy share, the tokens trained on (Σ token share × tokens of each logged interval), the
held-out loss curve, its slope over the last `window` evals, and a forgetting flag (the last held-out loss
above the first by more than `margin`, relative). Without held-out evals the training loss per source
stands in (nats per token; it measures fit to what was trained on, not generalisation).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..data.mixing import PolicyError, normalise_policy
from ..metrics import metric_series, read_metrics
from .sources import ViewerError

HELDOUT = "eval/source/{}/nats_per_char"
TRAIN = "train/source/{}/loss"


@dataclass
class SourceFeedback:
    name: str
    share: float                      # the policy's share of training tokens
    tokens: list[float]               # tokens trained on from this source, cumulative, at each of `steps`
    steps: list[int]                  # optimizer steps of the loss curve
    loss: list[float]                 # held-out nats per character (or training nats per token) at `steps`
    slope_per_1k_steps: float | None  # least-squares slope of `loss` over the last window
    forgetting: bool                  # last loss above the first by more than the margin


@dataclass
class RunFeedback:
    work_dir: Path
    step: int                  # last logged optimizer step
    policy_file: str | None    # data.sample_policy_file of the run (None: shares by raw bytes)
    metric: str                # what `loss` holds: "held-out nats/char" or "train nats/token"
    sources: list[SourceFeedback]

    @property
    def policy(self) -> dict[str, float]:
        return {s.name: s.share for s in self.sources}


def read_run(work_dir: str | Path, window: int = 3, margin: float = 0.02) -> RunFeedback:
    """The feedback of the run in `work_dir`; ViewerError (worded for the page) when it cannot be read."""
    work_dir = Path(work_dir)
    config = _read_config(work_dir)
    names = list((config.get("data") or {}).get("data") or {})
    if not names:
        raise ViewerError(f"{work_dir / 'config.yaml'}: names no data.data sources (not a pretraining run?)")
    rows = _read_metrics(work_dir / "metrics.jsonl")
    series = metric_series(rows)
    held_out = any(series.get(HELDOUT.format(n), ([], []))[0] for n in names)
    pattern, metric = (HELDOUT, "held-out nats/char") if held_out else (TRAIN, "train nats/token")
    if not any(series.get(pattern.format(n), ([], []))[0] for n in names):
        raise ViewerError(f"{work_dir / 'metrics.jsonl'}: no per-source loss logged (train/source/<name>/loss); "
                          "train with this version of the trainer (pretraining stage)")
    policy_file = (config.get("data") or {}).get("sample_policy_file")
    shares = _policy_shares(policy_file, names, series)
    sources = []
    for name in names:
        steps, loss = series.get(pattern.format(name), ([], []))
        cumulative = tokens_by_step(series, name)
        sources.append(SourceFeedback(
            name=name, share=shares[name], steps=steps, loss=loss, tokens=[cumulative(s) for s in steps],
            slope_per_1k_steps=slope(steps[-window:], loss[-window:]),
            forgetting=len(loss) > 1 and loss[-1] > loss[0] * (1 + margin)))
    return RunFeedback(work_dir, max(r["step"] for r in rows), policy_file, metric, sources)


def tokens_by_step(series: dict, name: str):
    """f(step) → tokens trained on from source `name` up to that step: each logged interval's token share
    times the tokens trained in that interval (train/tokens_seen differences)."""
    seen_steps, seen = series.get("train/tokens_seen", ([], []))
    share = dict(zip(*series.get(f"train/source/{name}/token_share", ([], [])), strict=True))
    points, total, before = [(0, 0.0)], 0.0, 0.0
    for step, tokens in zip(seen_steps, seen, strict=True):
        total += share.get(step, 0.0) * (tokens - before)
        before = tokens
        points.append((step, total))

    def at(step: int) -> float:
        return max((t for s, t in points if s <= step), default=0.0)

    return at


def slope(steps: list[int], values: list[float]) -> float | None:
    """Least-squares slope of values against steps, per 1000 steps; None under two points."""
    if len(steps) < 2:
        return None
    mean_x, mean_y = sum(steps) / len(steps), sum(values) / len(values)
    var = sum((x - mean_x) ** 2 for x in steps)
    if var == 0:
        return None
    return 1000 * sum((x - mean_x) * (y - mean_y) for x, y in zip(steps, values, strict=True)) / var


def _read_config(work_dir: Path) -> dict:
    path = work_dir / "config.yaml"
    if not work_dir.is_dir():
        raise ViewerError(f"{work_dir}: no such run directory (a training work_dir)")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ViewerError(f"{path}: missing; is {work_dir} a training work_dir (the run writes it at start)?") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ViewerError(f"{path}: cannot be read as the run's config ({type(err).__name__})") from None
    if not isinstance(config, dict):
        raise ViewerError(f"{path}: not a run config (expected a YAML mapping)")
    return config


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        raise ViewerError(f"{path}: missing; the run has logged nothing yet (it writes every log_interval steps)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = read_metrics(path)
    except (OSError, UnicodeDecodeError) as err:
        raise ViewerError(f"{path}: cannot be read as metrics ({type(err).__name__})") from None
    if not rows:
        raise ViewerError(f"{path}: holds no metrics lines" + (f" ({len(caught)} unreadable)" if caught else ""))
    return rows


def _policy_shares(policy_file: str | None, names: list[str], series: dict) -> dict[str, float]:
    """The run's policy shares from its policy file; without one (or when it is gone), the shares the mixer
    drew (`data/<name>/share`, which follow the policy within a document)."""
    if policy_file:
        try:
            return normalise_policy(json.loads(Path(policy_file).read_text(encoding="utf-8")), names)
        except (OSError, ValueError, PolicyError, AttributeError):
            pass
    drawn = {n: (series.get(f"data/{n}/share", ([], [0.0]))[1] or [0.0])[-1] for n in names}
    total = sum(drawn.values())
    return {n: v / total if total > 0 else 1 / len(names) for n, v in drawn.items()}
