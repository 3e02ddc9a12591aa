#!/usr/bin/env python
"""RL from a chat (SFT) checkpoint: DPO on preference pairs or GRPO against a reward model / reward functions.

The `llms-train-rl` command, runnable from a checkout, installed or not: the code, the --help text and the
exit codes are in llms_trainer/commands/train_rl.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the checkout's package, installed or not

from llms_trainer.commands.train_rl import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
