"""Resize a model's embeddings to an extended tokenizer, mean-initialising new rows.

The `llms-extend-embeddings` command, runnable from a checkout, installed or not: the code, the --help text
and the exit codes are in llms_trainer/commands/extend_embeddings.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package, installed or not

from llms_trainer.commands.extend_embeddings import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
