"""The proposed next policy, on a fixed synthetic run (config.yaml + metrics.jsonl) against hand-computed
values; the feedback read from it; the command line; bad or missing files are one message each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llms_trainer.commands.propose_policy import main
from llms_trainer.sampler_viewer.feedback import read_run
from llms_trainer.sampler_viewer.proposal import RuleSettings, propose
from llms_trainer.sampler_viewer.sources import ViewerError

# Held-out nats/char at steps 10, 20, 30: easy (already learned), learnable (falling), noise (flat).
HELD_OUT = {"easy": [1.00, 0.99, 0.98], "learnable": [3.00, 2.80, 2.60], "noise": [5.00, 5.00, 5.01]}


def write_run(root: Path, held_out: dict[str, list[float]] = HELD_OUT, policy: dict | None = None) -> Path:
    """A pretraining work_dir: 3 sources at equal shares, 3000 tokens per 10 steps (1000 per source)."""
    work = root / "run"
    work.mkdir(parents=True)
    policy_file = root / "uniform.json"
    policy_file.write_text(json.dumps(policy or {n: 1 for n in held_out}))
    (work / "config.yaml").write_text(yaml.safe_dump({"data": {"data": {n: f"/data/{n}" for n in held_out},
                                                               "sample_policy_file": str(policy_file)}}))
    rows = []
    for i, step in enumerate((10, 20, 30)):
        rows.append({"step": step, "train/loss": 3.0, "train/tokens_seen": 3000 * (i + 1),
                     **{f"train/source/{n}/loss": 2.0 for n in held_out},
                     **{f"train/source/{n}/token_share": 1 / 3 for n in held_out}})
        rows.append({"step": step, **{f"eval/source/{n}/nats_per_char": v[i] for n, v in held_out.items()}})
    (work / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return work


def test_feedback_of_a_run_per_source(tmp_path):
    run = read_run(write_run(tmp_path), window=3, margin=0.02)
    assert run.step == 30 and run.metric == "held-out nats/char"
    easy, learnable, noise = run.sources
    assert easy.share == pytest.approx(1 / 3) and easy.tokens == pytest.approx([1000, 2000, 3000])
    assert learnable.slope_per_1k_steps == pytest.approx(-20.0)  # -0.2 per 10 steps
    assert not any(s.forgetting for s in run.sources)


def test_the_rule_against_hand_computed_values(tmp_path):
    """gain = loss removed per 1M tokens of the source over steps 10 → 30 (2000 tokens each):
    easy 0.02/2000e-6 = 10, learnable 0.4/2000e-6 = 200, noise -0.01/2000e-6 = -5; scores ÷ 200:
    0.05, 1, -0.025; w = 1/3 · 2^score; normalised (2^0.05 + 2 + 2^-0.025 = 4.018086), then 0.94 q + 0.02."""
    proposal = propose(read_run(write_run(tmp_path)), RuleSettings(cap=2.0, floor=0.02, window=3))
    assert proposal.gains == pytest.approx({"easy": 10.0, "learnable": 200.0, "noise": -5.0})
    w = {"easy": 2 ** 0.05, "learnable": 2.0, "noise": 2 ** -0.025}  # × 1/3, which normalising removes
    expected = {n: 0.94 * v / sum(w.values()) + 0.02 for n, v in w.items()}
    assert proposal.policy == pytest.approx(expected, abs=1e-9)
    assert proposal.policy == pytest.approx({"easy": 0.262192, "learnable": 0.487885, "noise": 0.249923}, abs=1e-6)
    assert sum(proposal.policy.values()) == pytest.approx(1.0)
    assert proposal.reasons["learnable"].endswith("raised") and proposal.reasons["easy"].endswith("lowered")


def test_a_forgetting_source_is_raised_and_every_source_keeps_the_floor(tmp_path):
    held_out = {**HELD_OUT, "noise": [5.00, 5.10, 5.30]}  # risen 6 % above its first value: forgetting
    run = read_run(write_run(tmp_path, held_out), margin=0.02)
    assert [s.forgetting for s in run.sources] == [False, False, True]
    proposal = propose(run, RuleSettings(floor=0.1))
    assert proposal.policy["noise"] > 1 / 3 and "forgetting" in proposal.reasons["noise"]
    tiny = propose(read_run(write_run(tmp_path / "b", policy={"easy": 0.001, "learnable": 1, "noise": 1})),
                   RuleSettings(floor=0.1))
    assert tiny.policy["easy"] >= 0.1


def test_command_writes_the_policy_and_its_provenance(tmp_path, capsys):
    work = write_run(tmp_path)
    assert main(["--work-dir", str(work), "--policy-dir", str(tmp_path / "policies"), "--name", "next"]) == 0
    policy = json.loads((tmp_path / "policies/next.json").read_text())
    assert policy == pytest.approx({"easy": 0.262192, "learnable": 0.487885, "noise": 0.249923}, abs=1e-6)
    provenance = yaml.safe_load((tmp_path / "policies/next.provenance.yaml").read_text())
    assert provenance["step"] == 30 and provenance["run"] == str(work.resolve())
    assert provenance["rule"] == "exp3-heldout-gain" and provenance["settings"]["cap"] == 2.0
    assert "learnable" in capsys.readouterr().out
    assert main(["--work-dir", str(work), "--policy-dir", str(tmp_path / "policies"), "--name", "next"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["--work-dir", str(work), "--policy-dir", str(tmp_path / "p"), "--name", "../out"]) == 2


@pytest.mark.parametrize(("breakage", "message"), [
    (lambda w: (w / "metrics.jsonl").unlink(), "metrics.jsonl: missing"),
    (lambda w: (w / "metrics.jsonl").write_text("not json\n"), "holds no metrics lines (1 unreadable)"),
    (lambda w: (w / "metrics.jsonl").write_bytes(b"\xff\xfe\x00"), "cannot be read as metrics"),
    (lambda w: (w / "config.yaml").unlink(), "config.yaml: missing"),
    (lambda w: (w / "config.yaml").write_text("data: [1,"), "cannot be read as the run's config"),
    (lambda w: (w / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2}\n'), "no per-source loss logged"),
])
def test_bad_or_missing_run_files_are_one_message(tmp_path, capsys, breakage, message):
    work = write_run(tmp_path)
    breakage(work)
    with pytest.raises(ViewerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_run(work)
    assert main(["--work-dir", str(work), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
