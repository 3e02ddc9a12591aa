"""One run per work_dir: an exclusive lock, and no silent mixing with another run's checkpoints.

- The main process holds an exclusive `flock` on `work_dir/.lock` for the whole run. The kernel releases it
  when the process dies, so a lock left by a killed run is never stale; a second run fails at once with the
  holder's pid and host.
- Every checkpoint carries the id of its run's lineage (a fresh run starts one, a resume continues the one
  it resumes). A fresh run into a work_dir that holds checkpoints stops before any work unless
  `train.overwrite_work_dir` clears them; a resume refuses checkpoints of another lineage, or newer ones of
  its own (an abandoned future), in the same work_dir. Rotation then only ever sees this run's lineage.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

from llms_trainer.train.checkpoint import (
    checkpoint_lineage,
    complete_checkpoints,
    leftover_dirs,
)
from llms_trainer.train.errors import WorkDirError

LOCK_FILE = ".lock"


def lock_work_dir(work_dir: str | Path):
    """Take the exclusive lock of work_dir (created if missing); returns the open file that holds it."""
    work_dir = Path(work_dir)
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        handle = open(work_dir / LOCK_FILE, "a+", encoding="utf-8")
    except OSError as err:
        raise WorkDirError(f"work_dir '{work_dir}': cannot create it or its lock file ({err.strerror})") from err
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown process"
        handle.close()
        raise WorkDirError(f"work_dir '{work_dir}' is in use by another run ({holder}); wait for it to end or "
                           "choose another work_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle


def plan_lineage(work_dir: str | Path, resume_from: Path | None, overwrite: bool) -> tuple[str, list[Path]]:
    """(lineage id of this run, checkpoints to clear before it writes anything); raises WorkDirError.

    Reads only: nothing is deleted here, so a run that fails validation afterwards changes nothing.
    """
    found = complete_checkpoints(work_dir)
    if resume_from is None:
        if found and not overwrite:
            names = ", ".join(p.name for _, p in found[-3:])
            raise WorkDirError(
                f"work_dir '{work_dir}' holds checkpoints of another run ({names}); resume it with "
                "train.resume=auto, choose another work_dir, or set train.overwrite_work_dir=true to clear them")
        return uuid.uuid4().hex, [p for _, p in found]
    lineage = checkpoint_lineage(resume_from) or uuid.uuid4().hex
    resumed = resume_from.resolve()
    resumed_step = next((step for step, p in found if p.resolve() == resumed), None)
    in_the_way = [p for step, p in found if p.resolve() != resumed and (
        checkpoint_lineage(p) != lineage or resumed_step is None or step > resumed_step)]
    if in_the_way and not overwrite:
        names = ", ".join(p.name for p in in_the_way[-3:])
        raise WorkDirError(
            f"work_dir '{work_dir}' holds checkpoints that are not earlier steps of the run resumed from "
            f"{resume_from} ({names}); choose another work_dir, or set train.overwrite_work_dir=true to clear them")
    return lineage, in_the_way


# per-step eval outputs the stages write under work_dir by default (generation, GRPO completions, reward
# delta histograms and scores)
EVAL_OUTPUT_DIRS = ("generation_eval", "grpo_eval", "reward_eval", "delta_scores")


def set_aside_outputs(work_dir: str | Path) -> None:
    """A fresh run: move the previous run's eval output dirs to `<name>.prev` (as metrics.jsonl goes to
    metrics.prev.jsonl), so a step_<n> file of another run is never mistaken for this run's."""
    for name in EVAL_OUTPUT_DIRS:
        path = Path(work_dir) / name
        if path.is_dir():
            prev = path.with_name(f"{name}.prev")
            shutil.rmtree(prev, ignore_errors=True)
            os.replace(path, prev)


def clear(paths: list[Path], work_dir: str | Path) -> None:
    """Delete the planned checkpoints and the leftovers of crashed saves and rotations."""
    for path in [*paths, *leftover_dirs(work_dir)]:
        shutil.rmtree(path, ignore_errors=True)
