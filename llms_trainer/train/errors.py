"""How a run stops: every process agrees, one `error: …` line, a documented exit code.

Exit codes: 0 done, 2 bad input a user can fix (config, data, checkpoint, a full disk), 1 divergence
(non-finite loss or weights). Under several processes an error seen by one rank is agreed on with the others
(one all-reduce at the points where ranks can disagree: setup, each step's data, each save), so every rank
stops at the same place instead of one dying while the rest wait in a collective. Through the launch scripts
the ranks hand the message to the launcher (`LLMS_TRAINER_ERROR_FILE`), which prints it as the last line and
exits with its code; torch elastic then sees ranks that ended cleanly and prints no failure report.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from llms_trainer.config import ConfigError
from llms_trainer.data.mixing import PolicyError
from llms_trainer.data.shards import ShardError
from llms_trainer.model.load import ModelLoadError

ERROR_FILE_ENV = "LLMS_TRAINER_ERROR_FILE"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from or written (message names the directory)."""


class WorkDirError(RuntimeError):
    """work_dir is in use by another run, or holds another run's checkpoints."""


class NonFiniteError(RuntimeError):
    """The loss, gradients or weights became NaN or inf; training stopped on every process."""


class PeerStopped(RuntimeError):
    """Another process hit an error; this one stopped with it (that process reports the error)."""


# Bad input a user can fix: reported as one `error: ...` line, exit code 2.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, ModelLoadError, ShardError, PolicyError, CheckpointError,
                                            WorkDirError)


def any_rank(accelerator, flag: bool) -> bool:
    """True on every process when `flag` is true on at least one (one all-reduce; free on one process)."""
    if accelerator is None or accelerator.num_processes == 1:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(tensor, reduction="sum").item() > 0)


def first_rank(accelerator, flag: bool) -> int | None:
    """The lowest process index where `flag` is true, on every process; None when it is true nowhere."""
    if accelerator is None or accelerator.num_processes == 1:
        return 0 if flag else None
    flags = torch.zeros(accelerator.num_processes, device=accelerator.device)
    flags[accelerator.process_index] = 1.0 if flag else 0.0
    hits = accelerator.reduce(flags, reduction="sum").nonzero()  # one all-reduce
    return int(hits[0]) if len(hits) else None


def stop_if_any(accelerator, error: BaseException | None) -> None:
    """Raise on every process when any process has an error: its own, or PeerStopped on the others.

    The lowest rank with an error of its own reports it (`error.reporter`): when only rank 1 met a bad record,
    rank 1's message is the one the launcher prints."""
    reporter = first_rank(accelerator, error is not None)
    if reporter is None:
        return
    if error is None:
        error = PeerStopped("stopped because another process hit an error (reported there)")
    error.agreed = True  # every rank stops here together: exiting quietly leaves no rank waiting
    error.reporter = reporter == (accelerator.process_index if accelerator is not None else 0)
    raise error


@contextmanager
def stop_together(accelerator, errors: tuple[type[BaseException], ...] = USER_ERRORS) -> Iterator[None]:
    """Run a block on every process; if it raises `errors` on any one, every process raises after it."""
    error = None
    try:
        yield
    except errors as err:
        error = err
    stop_if_any(accelerator, error)


def report(error: BaseException, code: int) -> int:
    """Print (or hand to the launcher) one `error:` line; return this process's exit code.

    Errors every process agreed on end the processes with 0 when a launcher collects the message (so torch
    elastic does not report a crash); the launcher exits with `code`.
    """
    launched = ERROR_FILE_ENV in os.environ
    agreed_stop = getattr(error, "agreed", False) or int(os.environ.get("WORLD_SIZE", "1")) == 1
    if isinstance(error, PeerStopped):
        return 0 if launched and agreed_stop else code
    message = f"error: {error}".replace("\n", " ")
    if not launched:
        print(message, file=sys.stderr)
        return code
    if getattr(error, "reporter", os.environ.get("RANK", "0") == "0") or not agreed_stop:
        with open(os.environ[ERROR_FILE_ENV], "w", encoding="utf-8") as fh:
            fh.write(f"{code}\t{message}\n")
    return 0 if agreed_stop else code


def exit_code(error: BaseException) -> int | None:
    """The documented exit code of an error this package reports, None for anything else (a bug)."""
    if isinstance(error, NonFiniteError):
        return 1
    if isinstance(error, (*USER_ERRORS, PeerStopped)):
        return 2
    return None
