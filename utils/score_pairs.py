"""Pair accuracy of a reward-model checkpoint on preference-pair files.

The `llms-score-pairs` command, runnable from a checkout, installed or not: the code, the --help text
and the exit codes are in llms_trainer/commands/score_pairs.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package, installed or not

from llms_trainer.commands.score_pairs import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
