"""Ratios → sampling plan (shares, sampled amounts, epochs) and the policy file the trainer reads."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..data.mixing import PolicyError, normalise_policy
from ..io import atomic_write
from .sources import RAW_BYTES, TOKENS, Source, ViewerError


class PolicyExistsError(ViewerError):
    """The policy file exists; the page asks before overwriting."""



@dataclass
class PlanRow:
    """One source in a sampling plan; amounts in the plan's unit."""

    name: str
    percent: float
    share: float  # normalised target share (what the trainer uses)
    original_share: float  # share of the available amount
    available: float
    sampled: float
    epochs: float  # sampled ÷ available (inf for an empty source that gets a share)


@dataclass
class Plan:
    rows: list[PlanRow]
    unit: str  # TOKENS or RAW_BYTES
    allocated_percent: float
    total_sampled: float

    @property
    def remainder_percent(self) -> float:
        return 100.0 - self.allocated_percent

    @property
    def left_out(self) -> list[str]:
        return [r.name for r in self.rows if r.percent == 0]


def plan_unit(sources: list[Source]) -> str:
    """Tokens when every source's token count is known, else raw bytes (one unit for all sources)."""
    return TOKENS if sources and all(s.tokens is not None for s in sources) else RAW_BYTES


def available(source: Source, unit: str) -> float:
    return float(source.tokens if unit == TOKENS else source.raw_bytes)


def default_percents(sources: list[Source]) -> dict[str, float]:
    """Each source's share of the available amount in percent (2 decimals, summing to exactly 100)."""
    unit = plan_unit(sources)
    sizes = {s.name: available(s, unit) for s in sources}
    total = sum(sizes.values())
    if total <= 0:
        sizes, total = dict.fromkeys(sizes, 1.0), float(len(sizes))
    percents = {name: round(100 * size / total, 2) for name, size in sizes.items()}
    largest = max(percents, key=lambda n: percents[n])
    percents[largest] = round(percents[largest] + 100 - sum(percents.values()), 2)
    return percents


def parse_percents(texts: dict[str, str]) -> dict[str, float]:
    """Ratio inputs (percent text per source) as numbers ≥ 0; one ViewerError naming every bad input."""
    values, problems = {}, []
    for name, text in texts.items():
        try:
            value = float(str(text).strip().rstrip("%") or "0")
        except ValueError:
            problems.append(f"ratio of '{name}' must be a number, got {text!r}")
            continue
        if not math.isfinite(value) or value < 0:
            problems.append(f"ratio of '{name}' must be a finite number ≥ 0 (0 leaves it out), got {text!r}")
        values[name] = value
    if problems:
        raise ViewerError("; ".join(problems))
    if not any(values.values()):
        raise ViewerError("all ratios are 0: give at least one source a ratio above 0")
    return values


def make_plan(sources: list[Source], percents: dict[str, float], total_planned: float) -> Plan:
    """Per source: target share, amount sampled out of `total_planned` and epochs over what is available."""
    if not math.isfinite(total_planned) or total_planned <= 0:
        raise ViewerError(f"the planned training amount must be > 0, got {total_planned}")
    unit = plan_unit(sources)
    allocated = sum(percents.values())
    grand = sum(available(s, unit) for s in sources) or 1.0
    rows = []
    for source in sources:
        have = available(source, unit)
        share = percents[source.name] / allocated
        sampled = total_planned * share
        epochs = sampled / have if have > 0 else (math.inf if sampled > 0 else 0.0)
        rows.append(PlanRow(source.name, percents[source.name], share, have / grand, have, sampled, epochs))
    return Plan(rows, unit, allocated, total_planned)


# ---------------------------------------------------------------- the policy file

_POLICY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")


def policy_from_percents(percents: dict[str, float]) -> dict[str, float]:
    """`{source: share}` as the trainer reads it: sources at 0 % left out, shares summing to ~1 (6 digits)."""
    kept = {name: value for name, value in percents.items() if value > 0}
    if not kept:
        raise ViewerError("all ratios are 0: give at least one source a ratio above 0")
    total = sum(kept.values())
    policy = {name: float(f"{value / total:.6g}") for name, value in kept.items()}
    try:
        normalise_policy(policy, list(policy), where="policy")
    except PolicyError as err:
        raise ViewerError(str(err)) from err
    return policy


def policy_path(policy_root: str | Path, name: str, folder: str | Path | None = None) -> Path:
    """`<folder>/<name>.json` (folder: `policy_root` or a folder inside it); the name may hold sub-folders
    but no `..` or odd characters. ViewerError for a path outside `policy_root`."""
    name = name.strip().removesuffix(".json")
    if not _POLICY_NAME.match(name) or ".." in name:
        raise ViewerError(f"policy name {name!r}: use letters, digits, _ . - (and / for sub-folders), e.g. demo_mix")
    path = Path(folder if folder is not None else policy_root) / f"{name}.json"
    check_inside(path, policy_root)
    return path


def check_inside(path: str | Path, policy_root: str | Path) -> None:
    """ViewerError unless `path` (symlinks followed) lies inside `policy_root`, the only place the viewer writes."""
    if not Path(path).resolve().is_relative_to(Path(policy_root).resolve()):
        raise ViewerError(f"{path} is outside the policy directory {policy_root}: the viewer writes policies only "
                          "there (start it with SAMPLER_VIEWER_POLICY_DIR=DIR to use another directory)")


def save_policy(policy: dict[str, float], path: str | Path, *, policy_root: str | Path,
                overwrite: bool = False) -> Path:
    """Write the policy JSON atomically inside `policy_root`; PolicyExistsError when the file exists and
    `overwrite` is False."""
    path = Path(path)
    check_inside(path, policy_root)
    if path.exists() and not overwrite:
        raise PolicyExistsError(f"{path} exists")
    try:
        atomic_write(path, json.dumps(policy, indent=2, ensure_ascii=False) + "\n")
    except OSError as err:
        raise ViewerError(f"{path}: cannot write the policy ({err})") from err
    return path
