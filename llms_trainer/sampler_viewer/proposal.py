"""The proposed next policy: multiplicative weights on held-out loss reduction per token (Exp3-style).

The rule of Online Data Mixing (Albalak et al., 2023: Exp3 over sources, the reward being the loss a source's
tokens remove), on the held-out loss the run measured per source, with the two guards continual pretraining
needs — a floor share for every source and a cap on the change per round — and a forgetting guard:

1. gain g_s = (L_s at the window's first eval − L_s at its last) ÷ tokens trained on s in between
   (held-out nats/char removed per million tokens of s; the window is the last `window` evals);
2. score z_s = g_s ÷ max_t |g_t| in [−1, 1]; a source flagged as forgetting (its held-out loss risen above
   its first value by the margin) gets z_s = 1: training on it is what stops the regression;
3. w_s = p_s · cap^z_s: multiplicative weights with step ln(cap), so a share changes at most `cap`-fold per
   round (the best source's weight is multiplied by cap, a source whose loss rose most divided by it);
4. q = w ÷ Σw, then the floor: q_s ← (1 − K·floor) · q_s + floor (K sources; Exp3's uniform mixing), so
   every source keeps at least `floor` and can be measured next round.

Easy sources (already learned: little loss left to remove) and unlearnable ones (noise: none removed) lose
share to the sources whose held-out loss still falls fastest per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ..io import atomic_write
from .feedback import RunFeedback
from .plan import check_inside, save_policy
from .sources import ViewerError

RULE = "exp3-heldout-gain"


@dataclass(frozen=True)
class RuleSettings:
    cap: float = 2.0      # a weight changes at most by this factor per round (before normalising)
    floor: float = 0.02   # every source keeps at least this share
    window: int = 3       # evals of the gain window (the last ones)

    def check(self) -> None:
        if not (self.cap >= 1 and self.window >= 2 and self.floor >= 0):
            raise ViewerError("rule settings: need cap ≥ 1, window ≥ 2, floor ≥ 0")


@dataclass
class Proposal:
    policy: dict[str, float]        # proposed shares, summing to 1
    current: dict[str, float]
    reasons: dict[str, str]         # why, per source
    gains: dict[str, float | None]  # loss removed per million tokens of the source (None: not measured)


def propose(run: RunFeedback, settings: RuleSettings = RuleSettings()) -> Proposal:
    """The next policy for `run` by the rule above."""
    settings.check()
    if settings.floor * len(run.sources) >= 1:
        raise ViewerError(f"rule settings: floor {settings.floor} × {len(run.sources)} sources must stay below 1")
    gains, scores = {}, {}
    for s in run.sources:
        first = max(0, len(s.loss) - settings.window)
        tokens = s.tokens[-1] - s.tokens[first] if len(s.loss) >= 2 else 0.0
        gains[s.name] = (s.loss[first] - s.loss[-1]) / tokens * 1e6 if tokens > 0 else None
    scale = max((abs(g) for g in gains.values() if g is not None), default=0.0)
    weights = {}
    for s in run.sources:
        g, p = gains[s.name], s.share
        z = 1.0 if s.forgetting else (g / scale if g is not None and scale > 0 else 0.0)
        weights[s.name] = p * settings.cap ** z
        scores[s.name] = z
    total = sum(weights.values())
    k = len(weights)
    policy = {n: (1 - k * settings.floor) * w / total + settings.floor for n, w in weights.items()}
    reasons = {s.name: _reason(s.forgetting, gains[s.name], scores[s.name], s.loss, run.metric)
               + f"; {_change(s.share, policy[s.name])}" for s in run.sources}
    return Proposal(policy=policy, current=run.policy, reasons=reasons, gains=gains)


def _reason(forgetting: bool, gain: float | None, z: float, loss: list[float], metric: str) -> str:
    if forgetting:
        return f"forgetting: {metric} rose {loss[0]:.4g} → {loss[-1]:.4g} (score +1)"
    if gain is None:
        return "not measured (fewer than 2 evals or no tokens in the window; score 0)"
    return f"{metric} removed per 1M tokens: {gain:+.4g} (score {z:+.2f})"


def _change(before: float, after: float) -> str:
    """raised / lowered / kept, against the other sources (a change under 2 % counts as kept)."""
    if after > before * 1.02:
        return "raised"
    return "lowered" if after < before / 1.02 else "kept"


def save_proposal(proposal: Proposal, run: RunFeedback, path: str | Path, *, policy_root: str | Path,
                  settings: RuleSettings = RuleSettings(), overwrite: bool = False) -> tuple[Path, Path]:
    """Write the policy (the viewer's writer: inside `policy_root`, atomic, no silent overwrite) and its
    sidecar `<name>.provenance.yaml`: the run, step, rule and settings it came from."""
    path = Path(path)
    sidecar = path.with_name(f"{path.stem}.provenance.yaml")
    check_inside(sidecar, policy_root)
    policy = {n: float(f"{v:.6g}") for n, v in proposal.policy.items()}
    save_policy(policy, path, policy_root=policy_root, overwrite=overwrite)
    record = {"rule": RULE, "settings": settings.__dict__, "run": str(run.work_dir.resolve()), "step": run.step,
              "measured": run.metric, "from_policy": run.policy_file, "current": proposal.current,
              "proposed": policy, "reasons": proposal.reasons}
    try:
        atomic_write(sidecar, yaml.safe_dump(record, allow_unicode=True, sort_keys=False))
    except OSError as err:
        raise ViewerError(f"{sidecar}: cannot write the provenance ({err})") from err
    return path, sidecar
