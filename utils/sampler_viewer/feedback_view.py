"""The viewer's "Training feedback" tab: what a run's policy did per source, and the proposed next policy.

Layout only; the reading and the rule live in llms_trainer/sampler_viewer/{feedback,proposal}.py. The run
directories come from the text box (default: env SAMPLER_VIEWER_RUNS, several separated by commas); a run
that cannot be read is a message on the page, the other runs still show.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import streamlit as st

from llms_trainer.sampler_viewer.feedback import RunFeedback, read_run
from llms_trainer.sampler_viewer.plan import PolicyExistsError, policy_path
from llms_trainer.sampler_viewer.proposal import Proposal, RuleSettings, propose, save_proposal
from llms_trainer.sampler_viewer.sources import ViewerError


def feedback_section(resolve: Callable[[str], Path], policy_root: Path) -> None:
    """The whole tab; `resolve` turns typed paths into absolute ones (relative to the repository)."""
    st.subheader("Training feedback")
    st.caption("Per source: the share the policy gave it, the tokens it trained on, its held-out loss "
               "(eval.source_holdout_records), and a proposed next policy.")
    text = st.text_input("Run work_dir(s), comma-separated", os.environ.get("SAMPLER_VIEWER_RUNS", ""),
                         key="feedback_runs", help="the work_dir of a pretraining run, e.g. work_dirs/tiny_demo")
    left, middle, right = st.columns(3)
    window = int(left.number_input("Slope window (evals)", min_value=2, value=3, key="feedback_window"))
    margin = middle.number_input("Forgetting margin (% above the first value)", min_value=0.0, value=2.0,
                                 key="feedback_margin") / 100
    floor = right.number_input("Floor share (%)", min_value=0.0, max_value=30.0, value=2.0,
                               key="feedback_floor") / 100
    dirs = [d.strip() for d in text.split(",") if d.strip()]
    if not dirs:
        st.info("Enter the work_dir of a pretraining run to see what its mixture did.")
        return
    runs = []
    for typed in dirs:
        try:
            runs.append(read_run(resolve(typed), window=window, margin=margin))
        except ViewerError as err:
            st.error(str(err))
    if not runs:
        return
    relative = st.radio("Curves", ["absolute", "relative to the first eval"], horizontal=True,
                        key="feedback_scale") != "absolute"
    curves(runs, relative)
    settings = RuleSettings(window=window, floor=floor)
    for i, run in enumerate(runs):
        run_view(run, i, settings, policy_root, several=len(runs) > 1)


def curves(runs: list[RunFeedback], relative: bool) -> None:
    """The loss curves of every source of every run, one chart per measure; `relative`: each curve divided by
    its first value (sources of very different loss compared by their shape)."""
    for metric in dict.fromkeys(r.metric for r in runs):
        frame = pd.DataFrame({_label(run, s.name, len(runs) > 1): pd.Series(
            [v / s.loss[0] for v in s.loss] if relative and s.loss and s.loss[0] else s.loss, index=s.steps)
            for run in runs if run.metric == metric for s in run.sources})
        label = f"{metric} ÷ first eval" if relative else metric
        st.markdown(f"**{label} per source** (lower is better)")
        st.line_chart(frame.sort_index(), x_label="optimizer step", y_label=label)


def run_view(run: RunFeedback, index: int, settings: RuleSettings, policy_root: Path, several: bool) -> None:
    if several:
        st.markdown(f"#### Run {index + 1}: `{run.work_dir.name}`")
    try:
        proposal = propose(run, settings)
    except ViewerError as err:
        st.error(str(err))
        return
    st.caption(f"{run.work_dir} at step {run.step}; policy "
               f"{run.policy_file or 'by raw bytes (no sample_policy_file)'}; measured: {run.metric}")
    flagged = [s for s in run.sources if s.forgetting]
    if flagged:
        st.warning(f"{len(flagged)} source(s) forgetting: held-out loss above its first value (⚠ rows below).")
    rows = [{"source": s.name, "policy %": round(100 * s.share, 2), "tokens seen": int(s.tokens[-1]) if s.tokens else 0,
             "slope /1k steps": None if s.slope_per_1k_steps is None else round(s.slope_per_1k_steps, 4),
             "forgetting": "⚠ yes" if s.forgetting else "no", "proposed %": round(100 * proposal.policy[s.name], 2),
             "why": proposal.reasons[s.name]} for s in run.sources]
    st.dataframe(pd.DataFrame(rows).set_index("source"), width="stretch")
    shares = pd.DataFrame({"current %": [100 * proposal.current[n] for n in proposal.policy],
                           "proposed %": [100 * v for v in proposal.policy.values()]}, index=list(proposal.policy))
    st.bar_chart(shares, stack=False, y_label="% of training tokens")
    save_view(run, proposal, settings, policy_root, index)


def save_view(run: RunFeedback, proposal: Proposal, settings: RuleSettings, policy_root: Path, index: int) -> None:
    left, right = st.columns([3, 1])
    name = left.text_input("Proposed policy name", f"proposed_{run.work_dir.name}", key=f"proposal_name::{index}")
    overwrite = right.checkbox("Overwrite", key=f"proposal_overwrite::{index}")
    if not st.button("Save proposed policy", key=f"save_proposal::{index}"):
        return
    try:
        path, sidecar = save_proposal(proposal, run, policy_path(policy_root, name), policy_root=policy_root,
                                      settings=settings, overwrite=overwrite)
    except PolicyExistsError as err:
        st.warning(f"{err}: tick Overwrite to replace it, or choose another name.")
        return
    except ViewerError as err:
        st.error(str(err))
        return
    st.success(f"Saved {path} (provenance: {sidecar.name}) — use it with data.sample_policy_file: {path}")


def _label(run: RunFeedback, source: str, several: bool) -> str:
    return f"{run.work_dir.name}: {source}" if several else source
