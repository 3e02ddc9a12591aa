"""Processes that end when the process that started them dies (Linux parent-death signal).

torch elastic starts every rank in a session of its own, so killing a launcher (even with SIGKILL) would
leave its ranks training on, rotating checkpoints under a user who believes the run is dead. Each rank and
the `accelerate launch` process ask the kernel for SIGTERM when their parent dies:

    python -m llms_trainer.train.lifeline accelerate launch ...   (what train_llms.sh runs)
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask for `sig` when the parent process exits; False where the platform has no such request."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)
    return True


def main(argv: list[str]) -> None:
    """Exec `argv` (a launcher command) with the parent-death signal set; it survives exec."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(2)
    die_with_parent()
    try:
        os.execvp(argv[0], argv)
    except OSError as err:
        print(f"error: cannot run '{argv[0]}' ({err.strerror})", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main(sys.argv[1:])
