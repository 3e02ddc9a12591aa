"""Propose the next sampling policy from a pretraining run's per-source held-out loss.

The `llms-propose-policy` command, runnable from a checkout, installed or not: the code, the --help text
and the exit codes are in llms_trainer/commands/propose_policy.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package, installed or not

from llms_trainer.commands.propose_policy import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
