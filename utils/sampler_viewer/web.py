"""Sampler viewer: read a data directory, set per-source ratios, save the sample policy the trainer reads.

    streamlit run utils/sampler_viewer/web.py [--server.port 8001]

It listens on 127.0.0.1 only (utils/sampler_viewer/.streamlit/config.toml); add `--server.address 0.0.0.0`
to serve other machines. Defaults come from env vars: SAMPLER_VIEWER_DATA_DIR (data/pretrain_data),
SAMPLER_VIEWER_TOKENIZER (configs/tokenizers/demo_base), SAMPLER_VIEWER_POLICY_DIR (configs/sample_policy:
the only directory the page writes policies into), SAMPLER_VIEWER_RUNS (the "Training feedback" tab's
runs). Relative paths are read from the repository root. The logic lives in llms_trainer/sampler_viewer/;
this file and feedback_view.py only lay out the page.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # runs from a checkout without `pip install -e .` too

from llms_trainer.sampler_viewer.page_text import code, literal  # noqa: E402
from llms_trainer.sampler_viewer.plan import (  # noqa: E402
    Plan,
    PolicyExistsError,
    default_percents,
    make_plan,
    parse_percents,
    plan_unit,
    policy_from_percents,
    policy_path,
    save_policy,
)
from llms_trainer.sampler_viewer.sources import (  # noqa: E402
    MB,
    TOKENS,
    Source,
    ViewerError,
    count_tokens,
    load_tokenizer,
    parse_pasted_sizes,
    scan_data_dir,
)
from utils.sampler_viewer.feedback_view import feedback_section  # noqa: E402


def resolve(text: str) -> Path:
    path = Path(text.strip()).expanduser()
    return path if path.is_absolute() else ROOT / path


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def amount(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if unit == TOKENS else f"{value / MB:,.3f}"


def unit_label(unit: str) -> str:
    return "tokens" if unit == TOKENS else "raw MB"


def policy_root() -> Path:
    """The directory policies may be written into, fixed when the viewer starts (not typed in the page)."""
    return resolve(os.environ.get("SAMPLER_VIEWER_POLICY_DIR", "configs/sample_policy"))


def sidebar() -> tuple[str, str, str, str]:
    side = st.sidebar
    data_dir = side.text_input("Data directory", os.environ.get("SAMPLER_VIEWER_DATA_DIR", "data/pretrain_data"),
                               key="data_dir", help="shards from data/compress_data.py (data/pretrain_data) or "
                               "raw jsonl (data/shuffled_data/pretrain); relative to the repository root")
    tokenizer = side.text_input("Tokenizer directory (token counts)",
                                os.environ.get("SAMPLER_VIEWER_TOKENIZER", "configs/tokenizers/demo_base"),
                                key="tokenizer")
    policy_dir = side.text_input("Policy directory", shown(policy_root()), key="policy_dir",
                                 help=f"{shown(policy_root())} or a folder inside it: the viewer writes nowhere "
                                 "else (SAMPLER_VIEWER_POLICY_DIR sets it when starting the viewer)")
    pasted = side.text_area("…or paste sizes (old viewer form)", key="pasted",
                            help="{name: size, ...} or two CSV lines (names, then sizes). Sizes like 253K, 1.5M, "
                            "2G; a bare number is MB. Pasted sizes replace the data directory.")
    return data_dir, os.path.normpath(tokenizer.strip()) if tokenizer.strip() else "", policy_dir, pasted


def load_sources(data_dir: str, tokenizer_key: str, pasted: str) -> list[Source]:
    try:
        if pasted.strip():
            st.caption("Sources from pasted sizes (clear the text box to read the data directory).")
            return parse_pasted_sizes(pasted)
        sources, warnings = scan_data_dir(resolve(data_dir), tokenizer_key or None)
    except ViewerError as err:
        st.error(literal(err))
        st.stop()
    for warning in warnings:
        st.warning(literal(warning))
    st.caption(f"Sources in {code(shown(resolve(data_dir)))}")
    return sources


def count_button(sources: list[Source], tokenizer_key: str) -> None:
    missing = [s for s in sources if s.tokens is None and s.kind != "pasted"]
    if not missing or not tokenizer_key:
        return
    if not st.sidebar.button(f"Count tokens ({len(missing)} source(s))", key="count_tokens"):
        return
    try:
        tokenizer = load_tokenizer(resolve(tokenizer_key))
        for source in missing:
            label = f"counting tokens of {literal(source.name)}"
            bar = st.progress(0.0, text=label)
            count_tokens(source, tokenizer, tokenizer_key, progress=lambda f, b=bar, t=label: b.progress(f, text=t))
            bar.empty()
    except ViewerError as err:
        st.error(literal(err))


def sources_table(sources: list[Source]) -> None:
    rows = [{"source": literal(s.name), "kind": s.kind, "raw MB": f"{s.raw_bytes / MB:,.3f}",
             "compressed MB": "—" if s.zst_bytes is None else f"{s.zst_bytes / MB:,.3f}",
             "records": "—" if s.records is None else f"{s.records:,}",
             "tokens": amount(s.tokens, TOKENS), "bad lines": "—" if s.bad_lines is None else f"{s.bad_lines:,}"}
            for s in sources]
    st.table(pd.DataFrame(rows).set_index("source"))


def ratio_inputs(sources: list[Source], scope: str) -> dict[str, str]:
    """A ratio input per source. A ratio still at its default follows the default when it changes (token
    shares replace raw-byte shares once tokens are counted); a ratio the user typed is kept."""
    st.subheader("Ratios (% of training tokens; 0 leaves a source out)")
    defaults = {name: f"{value:g}" for name, value in default_percents(sources).items()}
    shown_defaults = st.session_state.get(f"pct_defaults::{scope}", {})
    columns = st.columns(min(4, len(sources)))
    texts = {}
    for i, source in enumerate(sources):
        key = f"pct::{scope}::{source.name}"
        if key not in st.session_state or st.session_state[key] == shown_defaults.get(source.name):
            st.session_state[key] = defaults[source.name]
        texts[source.name] = columns[i % len(columns)].text_input(f"{literal(source.name)} %", key=key)
    st.session_state[f"pct_defaults::{scope}"] = defaults
    return texts


def planned_total(sources: list[Source], unit: str, scope: str) -> float:
    """The training amount to plan for, in `unit`; inputs are kept per data directory (`scope`)."""
    have = sum(s.tokens if unit == TOKENS else s.raw_bytes for s in sources)
    if unit != TOKENS:
        st.caption("Token counts are not known for every source, so amounts are raw bytes (count tokens in the "
                   "sidebar for the trainer's unit).")
        return st.number_input("Planned raw MB to train on", min_value=0.001, value=max(0.001, have / MB),
                               format="%.3f", key=f"total_raw_mb::{scope}") * MB
    how = st.radio("Plan by", ["total tokens", "steps × tokens per step"], horizontal=True, key="plan_by")
    if how == "total tokens":
        return float(st.number_input("Total training tokens", min_value=1, value=max(1, int(have)),
                                     key=f"total_tokens::{scope}"))
    left, right = st.columns(2)
    steps = left.number_input("num_training_steps", min_value=1, value=1000, key="steps")
    per_step = right.number_input("tokens per step (batch × seq_length × accumulation × processes)",
                                  min_value=1, value=8192, key="tokens_per_step")
    return float(steps * per_step)


def plan_view(plan: Plan) -> None:
    label = unit_label(plan.unit)
    if plan.remainder_percent >= 0:
        st.metric("Unallocated", f"{plan.remainder_percent:.2f} %")
    else:
        st.metric("Over-allocated", f"{-plan.remainder_percent:.2f} %")
    if abs(plan.remainder_percent) > 1e-9:
        st.caption(f"The trainer normalises ratios: each source gets its ratio ÷ {plan.allocated_percent:g} %.")
    rows = [{"source": literal(r.name), "ratio %": f"{r.percent:g}", "share %": f"{100 * r.share:.2f}",
             "original %": f"{100 * r.original_share:.2f}", f"available ({label})": amount(r.available, plan.unit),
             f"sampled ({label})": amount(r.sampled, plan.unit), "epochs": f"{r.epochs:.3f}"} for r in plan.rows]
    rows.append({"source": "total", "ratio %": f"{plan.allocated_percent:g}", "share %": "100.00",
                 "original %": "100.00", f"available ({label})": amount(sum(r.available for r in plan.rows), plan.unit),
                 f"sampled ({label})": amount(plan.total_sampled, plan.unit), "epochs": ""})
    st.table(pd.DataFrame(rows).set_index("source"))
    chart = pd.DataFrame({"original %": [100 * r.original_share for r in plan.rows],
                          "sampled %": [100 * r.share for r in plan.rows]}, index=[r.name for r in plan.rows])
    st.bar_chart(chart, stack=False, y_label="% of training amount")
    if plan.left_out:
        kept = [r.name for r in plan.rows if r.percent > 0]
        st.warning(literal(f"Left out (ratio 0): {', '.join(plan.left_out)}. They are omitted from the policy, and "
                           f"the trainer errors if data.data lists a source the policy lacks: list only "
                           f"{', '.join(kept)}."))


def save_section(percents: dict[str, float], policy_dir: str) -> None:
    st.subheader("Save policy")
    name = st.text_input("Policy name", "pretrain_mix", key="policy_name")
    try:
        policy = policy_from_percents(percents)
        path = policy_path(policy_root(), name, resolve(policy_dir))
    except ViewerError as err:
        st.error(literal(err))
        return
    st.caption(f"Writes {code(shown(path))}:")
    st.code(json.dumps(policy, indent=2), language="json")
    st.button("Save policy", key="save", type="primary", on_click=write, args=(policy, str(path), False))
    pending = st.session_state.get("pending_overwrite")
    if pending:
        st.warning(literal(f"{shown(Path(pending['path']))} exists. Overwrite it?"))
        yes, no = st.columns(2)
        yes.button("Overwrite", key="overwrite", on_click=write, args=(pending["policy"], pending["path"], True))
        no.button("Cancel", key="cancel", on_click=cancel)
    kind, message = st.session_state.pop("save_message", (None, ""))
    if kind:
        getattr(st, kind)(literal(message))


def write(policy: dict[str, float], path: str, overwrite: bool) -> None:
    """Button callback (runs before the rerun): save, or remember the file to ask about overwriting."""
    st.session_state.pop("pending_overwrite", None)
    try:
        save_policy(policy, Path(path), policy_root=policy_root(), overwrite=overwrite)
    except PolicyExistsError:
        st.session_state["pending_overwrite"] = {"path": path, "policy": policy}
        return
    except ViewerError as err:
        st.session_state["save_message"] = ("error", str(err))
        return
    st.session_state["save_message"] = ("success", f"Saved {shown(Path(path))} — use it with "
                                        f"data.sample_policy_file: {shown(Path(path))}")


def cancel() -> None:
    st.session_state.pop("pending_overwrite", None)
    st.session_state["save_message"] = ("info", "Not saved.")


def main() -> None:
    st.set_page_config(page_title="Sampler viewer", layout="wide")
    st.title("Sampler viewer")
    plan_tab, feedback_tab = st.tabs(["Plan a mixture", "Training feedback"])
    with feedback_tab:  # first: the plan stops the script on a bad data directory
        feedback_section(resolve, policy_root())
    with plan_tab:
        plan_page()


def plan_page() -> None:
    data_dir, tokenizer_key, policy_dir, pasted = sidebar()
    sources = load_sources(data_dir, tokenizer_key, pasted)
    count_button(sources, tokenizer_key)
    sources_table(sources)
    scope = "pasted" if pasted.strip() else str(resolve(data_dir))
    texts = ratio_inputs(sources, scope)
    try:
        percents = parse_percents(texts)
        plan = make_plan(sources, percents, planned_total(sources, plan_unit(sources), scope))
    except ViewerError as err:
        st.error(literal(err))
        return
    plan_view(plan)
    save_section(percents, policy_dir)


main()
