"""The "Training feedback" tab, run by streamlit's AppTest on a real run's work_dir: per-source curves,
shares and the proposal, saving it with its provenance, and every bad or missing run file as a message."""

from __future__ import annotations

import json

import pytest
import yaml

from llms_trainer.data.mixing import load_policy
from tests.viewer.run_support import feedback_run  # noqa: F401 (fixture)


def _show(app, runs: str):
    app.text_input(key="feedback_runs").set_value(runs)
    return app.run()


def test_a_runs_feedback_shows_curves_shares_and_the_proposal(app, feedback_run, viewer_env):  # noqa: F811
    app = _show(app, str(feedback_run))
    assert not app.exception and not app.error
    table = app.dataframe[0].value
    assert list(table.index) == ["news", "wiki"]
    assert table.loc["news", "policy %"] == pytest.approx(25.0) and table.loc["wiki", "policy %"] == pytest.approx(75.0)
    assert (table["tokens seen"] > 0).all() and table["proposed %"].sum() == pytest.approx(100.0, abs=0.05)
    assert len(app.tabs[1].get("vega_lite_chart")) == 2  # held-out curves per source; current vs proposed shares
    assert "held-out nats/char" in " ".join(str(c.value) for c in app.caption)
    app.radio(key="feedback_scale").set_value("relative to the first eval").run()
    assert "held-out nats/char ÷ first eval per source" in " ".join(str(m.value) for m in app.markdown)
    app.button(key="save_proposal::0").click().run()
    policy_dir = viewer_env["SAMPLER_VIEWER_POLICY_DIR"]
    written = policy_dir / f"proposed_{feedback_run.name}.json"
    assert str(written) in " ".join(str(s.value) for s in app.success)
    assert load_policy(written, ["news", "wiki"]) == pytest.approx(
        {n: table.loc[n, "proposed %"] / 100 for n in ("news", "wiki")}, abs=1e-3)
    provenance = yaml.safe_load((policy_dir / f"proposed_{feedback_run.name}.provenance.yaml").read_text())
    assert provenance["run"] == str(feedback_run.resolve()) and provenance["step"] == 8


def test_several_runs_share_one_chart_and_a_bad_one_is_a_message(app, feedback_run, tmp_path):  # noqa: F811
    app = _show(app, f"{feedback_run}, {tmp_path / 'nowhere'}")
    assert "no such run directory" in app.error[0].value
    assert len(app.dataframe) == 1  # the readable run still shows


@pytest.mark.parametrize(("breakage", "message"), [
    (lambda w: (w / "metrics.jsonl").unlink(), "metrics.jsonl: missing"),
    (lambda w: (w / "metrics.jsonl").write_text("{oops\n"), "holds no metrics lines (1 unreadable)"),
    (lambda w: (w / "config.yaml").write_text(": : :"), "cannot be read as the run's config"),
    (lambda w: (w / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 2.0}) + "\n"),
     "no per-source loss logged"),
])
def test_bad_or_missing_run_files_are_a_message_on_the_page(app, feedback_run, tmp_path, breakage, message):  # noqa: F811
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(feedback_run, copy, ignore=shutil.ignore_patterns("checkpoint-*"))
    breakage(copy)
    app = _show(app, str(copy))
    assert not app.exception
    assert message in app.error[0].value
    assert app.table  # the plan tab is untouched
