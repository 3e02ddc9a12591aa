"""Checkpoint and work_dir faults: another run's checkpoints, two runs at once, a NaN loss, gradient or weights,
a changed lr on resume, kill -9 inside a save or a rotation, crafted pickles, a full disk. Each asserts the
message and that nothing was lost."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import llms_trainer.ops.lm_loss as lm_loss_ops
from llms_trainer.train import checkpoint as ckpt
from llms_trainer.train import engine
from llms_trainer.train.errors import CheckpointError, NonFiniteError, WorkDirError
from llms_trainer.train.run import run
from llms_trainer.train.workdir import lock_work_dir
from tests.faults.support import file_hashes, one_error_line, steps
from tests.train.conftest import RecordingLogger

ROOT = Path(__file__).resolve().parents[2]


def train(config, model_config, *overrides, logger=None):
    return run(config, list(overrides), str(model_config), logger=logger or RecordingLogger())


def snapshot(folder) -> dict:
    """{relative path: (size, mtime)} of every file under folder."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_fresh_run_into_used_work_dir_stops_before_any_work(write_config, model_config_file, tmp_path):
    old = write_config("run", train={"num_training_steps": 4, "save_total_limit": 2}, save_interval=1)
    train(old, model_config_file)
    work = tmp_path / "run"
    assert steps(work) == [3, 4]
    before = snapshot(work)
    with pytest.raises(WorkDirError, match=r"holds checkpoints of another run \(checkpoint-3, checkpoint-4\).*"
                                           r"train.resume=auto.*overwrite_work_dir=true"):
        train(old, model_config_file, "train.resume=none", "train.num_training_steps=2")
    assert snapshot(work) == before  # config.yaml, metrics and checkpoints untouched

    # told to overwrite: the old run's checkpoints go, and the new run keeps its own (the bug: rotation
    # deleted the checkpoint-2 it had just written and `resume: auto` then picked the old checkpoint-4)
    result = train(old, model_config_file, "train.resume=none", "train.num_training_steps=2",
                   "train.overwrite_work_dir=true")
    assert steps(work) == [1, 2] and result.last_checkpoint == work / "checkpoint-2"
    assert ckpt.resolve_resume("auto", work) == work / "checkpoint-2"


def test_rotation_only_touches_its_own_lineage_and_never_the_newest(tmp_path):
    def fake(step, lineage):
        path = tmp_path / f"checkpoint-{step}"
        (path / ckpt.STATE_DIR).mkdir(parents=True)
        (path / ckpt.STATE_DIR / "state.json").write_text(json.dumps({"step": step, "lineage": lineage}))
        (path / ckpt.MARKER).write_text(json.dumps({"step": step}))
        return path

    fake(1, "other"), fake(2, "mine"), fake(3, "mine"), fake(9, "other")
    newest = fake(4, "mine")
    deleted = ckpt.rotate_checkpoints(tmp_path, 1, "mine", keep=newest)
    assert sorted(p.name for p in deleted) == ["checkpoint-2", "checkpoint-3"]
    assert steps(tmp_path) == [1, 4, 9]
    # the checkpoint just written survives even when it is not the highest step of its lineage
    low = fake(0, "mine")
    ckpt.rotate_checkpoints(tmp_path, 1, "mine", keep=low)
    assert 0 in steps(tmp_path)


def test_resume_refuses_newer_checkpoints_of_an_abandoned_future(write_config, model_config_file, tmp_path):
    config = write_config("run", train={"num_training_steps": 4}, save_interval=2)
    train(config, model_config_file)
    work = tmp_path / "run"
    with pytest.raises(WorkDirError, match=r"not earlier steps of the run resumed from .*checkpoint-2 "
                                           r"\(checkpoint-4\)"):
        train(config, model_config_file, f"train.resume={work / 'checkpoint-2'}")
    assert steps(work) == [2, 4]


def test_second_run_on_a_locked_work_dir_is_refused_and_stale_locks_are_ignored(
        write_config, model_config_file, tmp_path):
    config = write_config("run", train={"num_training_steps": 2})
    holder = lock_work_dir(tmp_path / "run")
    try:
        with pytest.raises(WorkDirError, match=rf"in use by another run \(pid {os.getpid()} on .*\)"):
            train(config, model_config_file)
    finally:
        holder.close()
    assert not (tmp_path / "run" / "config.yaml").exists()
    # a run killed with -9 while holding the lock leaves the file, not the lock
    code = (f"import os, sys; sys.path.insert(0, {os.getcwd()!r}); from llms_trainer.train.workdir import "
            f"lock_work_dir; h = lock_work_dir({str(tmp_path / 'run')!r}); os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code], check=False, timeout=120)
    assert "pid" in (tmp_path / "run" / ".lock").read_text()
    assert sorted(train(config, model_config_file).losses) == [1, 2]


def assert_all_saved_weights_finite(work) -> None:
    for _, path in ckpt.complete_checkpoints(work):
        weights = load_file(path / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values()), path


def test_nan_gradient_with_a_finite_loss_stops_before_the_update(write_config, model_config_file, tmp_path,
                                                                 monkeypatch):
    config = write_config("run", train={"num_training_steps": 6}, save_interval=1)
    calls = {"n": 0}
    real = lm_loss_ops.lm_loss_terms

    def nan_gradient_at_third_step(model, batch, *args, **options):
        calls["n"] += 1
        loss, terms = real(model, batch, *args, **options)
        if calls["n"] == 3:  # sqrt'(0) = inf, times 0: the loss stays finite, its gradient is NaN
            weight = next(model.parameters())
            loss = loss + 0.0 * torch.sqrt(weight.sum() * 0.0)
        return loss, terms

    monkeypatch.setattr(lm_loss_ops, "lm_loss_terms", nan_gradient_at_third_step)
    with pytest.raises(NonFiniteError, match=r"gradient norm is nan at step 3.*Last good checkpoint: .*checkpoint-2"):
        train(config, model_config_file)
    work = tmp_path / "run"
    assert steps(work) == [1, 2]
    assert_all_saved_weights_finite(work)


def test_nan_loss_ends_the_script_with_exit_1_naming_the_last_good_checkpoint_and_resume_recovers(
        write_config, model_config_file, tmp_path, monkeypatch, capsys):
    from train_llms import main

    config = write_config("run", train={"num_training_steps": 4}, save_interval=2)
    real, calls = lm_loss_ops.lm_loss_terms, {"n": 0}

    def nan_at_third_step(model, batch, *args, **options):
        calls["n"] += 1
        loss, terms = real(model, batch, *args, **options)
        return (loss * float("nan") if calls["n"] == 3 else loss), terms

    monkeypatch.setattr(lm_loss_ops, "lm_loss_terms", nan_at_third_step)
    args = ["--train_config", str(config), "--model_config", str(model_config_file)]
    assert main(args) == 1
    work = tmp_path / "run"
    assert one_error_line(capsys.readouterr().err) == (
        f"error: loss is nan at step 3 (on at least one process); stopped every process before the update. Last "
        f"good checkpoint: {work / 'checkpoint-2'}. Lower train.lr, check the data, or resume from that checkpoint.")
    assert steps(work) == [2] and not ckpt.leftover_dirs(work)
    kept = file_hashes(work / "checkpoint-2")
    monkeypatch.setattr(lm_loss_ops, "lm_loss_terms", real)  # the cause is gone: resume (train.resume: auto)
    assert main(args) == 0 and file_hashes(work / "checkpoint-2") == kept
    reference = train(write_config("reference", train={"num_training_steps": 4}), model_config_file)
    resumed = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"]: r["train/loss"] for r in resumed} == pytest.approx(reference.losses, abs=1e-6)


def test_non_finite_weights_are_never_saved_or_named_good(write_config, model_config_file, tmp_path, monkeypatch):
    config = write_config("run", train={"num_training_steps": 6}, save_interval=1)
    real_step = engine.optimizer_step

    def update_that_breaks_the_weights(*args, **kwargs):  # as a DeepSpeed step with inf grads would
        out = real_step(*args, **kwargs)
        if args[8] == 2:  # the third optimizer step
            with torch.no_grad():
                next(args[1].parameters()).fill_(float("nan"))
        return out

    monkeypatch.setattr(engine, "optimizer_step", update_that_breaks_the_weights)
    with pytest.raises(NonFiniteError, match=r"weights hold NaN/inf at step 3; not saving them\. Last good "
                                             r"checkpoint: .*checkpoint-2\b"):
        train(config, model_config_file)
    work = tmp_path / "run"
    assert steps(work) == [1, 2] and not list(work.glob("checkpoint-3*"))
    assert_all_saved_weights_finite(work)


def test_resume_applies_the_new_learning_rate_and_logs_the_real_one(write_config, model_config_file, tmp_path):
    config = write_config("run", train={"num_training_steps": 4, "num_warmup_steps": 0, "lr": 5e-3,
                                        "min_lr": 5e-3}, save_interval=2)
    first = RecordingLogger()
    train(config, model_config_file, logger=first)
    assert [m["train/lr"] for _, m in first.rows if "train/lr" in m] == pytest.approx([5e-3] * 4)
    later = RecordingLogger()
    train(config, model_config_file, f"train.resume={tmp_path / 'run' / 'checkpoint-2'}", "train.lr=1e-3",
          "train.min_lr=1e-3", f"work_dir={tmp_path / 'again'}", logger=later)
    assert [(s, m["train/lr"]) for s, m in later.rows if "train/lr" in m] == [(3, pytest.approx(1e-3)),
                                                                             (4, pytest.approx(1e-3))]


# A run in its own process that SIGKILLs itself at one moment of a save, after writing the sha256 of every file
# of the complete checkpoints it leaves (at_kill.json beside the work_dir).
KILLED_RUN = """
import json, os, signal, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from llms_trainer.train import checkpoint as ckpt
from llms_trainer.train.run import run
from tests.faults.support import file_hashes

def die():
    work = Path({work!r})
    at_kill = {{path.name: file_hashes(path) for _, path in ckpt.complete_checkpoints(work)}}
    (work.parent / "at_kill.json").write_text(json.dumps(at_kill))
    os.kill(os.getpid(), signal.SIGKILL)
{hook}
run({config!r}, [], {model_config!r})
"""
KILL_POINTS = {  # where the kill lands → (the hook, the newest complete checkpoint it must leave)
    "weights written, trainer state not": ("""
real = ckpt.save_tokenizer
def hooked(tokenizer, out):
    if Path(out).name == "checkpoint-3.partial":
        die()
    return real(tokenizer, out)
ckpt.save_tokenizer = hooked
""", 2),
    "COMPLETE written, not yet renamed": ("""
real = ckpt.replace_dir
def hooked(new, final):
    if Path(new).name == "checkpoint-3.partial":
        die()
    return real(new, final)
ckpt.replace_dir = hooked
""", 2),
    "rotation, half of checkpoint-2 deleted": ("""
real = ckpt.shutil.rmtree
def hooked(path, *args, **kwargs):
    if str(path).endswith("checkpoint-2.deleting"):
        (Path(path) / "model.safetensors").unlink()
        die()
    return real(path, *args, **kwargs)
ckpt.shutil.rmtree = hooked
""", 3),
}


@pytest.mark.parametrize("moment", list(KILL_POINTS))
def test_kill_9_during_a_save_keeps_the_newest_complete_checkpoint_and_resumes_exactly(
        moment, write_config, model_config_file, tmp_path):
    hook, newest = KILL_POINTS[moment]
    config = write_config("run", train={"num_training_steps": 5, "save_total_limit": 1}, save_interval=1)
    work = tmp_path / "run"
    code = KILLED_RUN.format(root=str(ROOT), work=str(work), hook=hook, config=str(config),
                             model_config=str(model_config_file))
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    at_kill = json.loads((tmp_path / "at_kill.json").read_text())
    assert list(at_kill) == [f"checkpoint-{newest}"]  # rotation had kept exactly the newest complete one
    assert steps(work) == [newest], moment  # the half-written or half-deleted one does not look complete
    assert file_hashes(work / f"checkpoint-{newest}") == at_kill[f"checkpoint-{newest}"]  # byte for byte
    assert ckpt.resolve_resume("auto", work) == work / f"checkpoint-{newest}"
    assert ckpt.leftover_dirs(work), moment  # the kill really landed inside the save or the rotation

    reference = train(write_config("reference", train={"num_training_steps": 5}), model_config_file)
    resumed = train(config, model_config_file)  # train.resume: auto
    assert sorted(resumed.losses) == list(range(newest + 1, 6)), moment
    for step, loss in resumed.losses.items():
        assert loss == pytest.approx(reference.losses[step], abs=1e-6), (moment, step)
    assert steps(work) == [5] and not ckpt.leftover_dirs(work)
    final, expected = (load_file(w / "checkpoint-5" / "model.safetensors") for w in (work, tmp_path / "reference"))
    assert all(torch.allclose(final[name], expected[name], atol=1e-6) for name in expected)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_trainer_state_is_refused_without_running_its_code(write_config, model_config_file, tmp_path):
    config = write_config("run", train={"num_training_steps": 2})
    train(config, model_config_file)
    marker = tmp_path / "pwned"
    state = tmp_path / "run" / "checkpoint-2" / ckpt.STATE_DIR
    torch.save({"state": {}, "param_groups": [], "x": _Payload(marker)}, state / "optimizer.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint-2: cannot restore the trainer state"):
        train(config, model_config_file, "train.num_training_steps=3")
    assert not marker.exists()
    # RNG state is JSON: nothing in a trainer state is unpickled beyond weights_only's tensors
    assert sorted(p.name for p in state.iterdir()) == ["optimizer.pt", "rng_rank0.json", "stage_rank0.json",
                                                       "state.json"]


def test_crafted_deepspeed_file_is_refused_before_deepspeed_opens_it(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "deepspeed" / "engine"
    folder.mkdir(parents=True)
    torch.save({"module": {"w": torch.zeros(2)}, "ds_version": "0.19"}, folder / "mp_rank_00_model_states.pt")
    ckpt.check_deepspeed_files(tmp_path / "deepspeed")  # tensors and plain values pass
    with open(folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt", "wb") as fh:
        pickle.dump(_Payload(marker), fh)
    with pytest.raises(CheckpointError, match="zero_pp_rank_0_mp_rank_00_optim_states.pt: refused"):
        ckpt.check_deepspeed_files(tmp_path / "deepspeed")
    assert not marker.exists()


def test_failed_save_is_one_clear_error_and_keeps_the_previous_checkpoint(write_config, model_config_file,
                                                                          tmp_path, monkeypatch):
    config = write_config("run", train={"num_training_steps": 4}, save_interval=2)
    real_save = torch.save

    def disk_full(obj, path, *args, **kwargs):
        if "checkpoint-4" in str(path):
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"could not write .*checkpoint-4 \(No space left on device\); "
                                              r"earlier checkpoints are kept"):
        train(config, model_config_file)
    work = tmp_path / "run"
    assert steps(work) == [2] and not list(work.glob("checkpoint-4*"))
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert sorted(train(config, model_config_file).losses) == [3, 4]
