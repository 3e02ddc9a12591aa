"""Convert a Llama-architecture GGUF file into an HF checkpoint (safetensors + tokenizer).

Runnable from a checkout, installed or not: the code, the --help text and the exit codes are in
llms_trainer/commands/convert_gguf.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package, installed or not

from llms_trainer.commands.convert_gguf import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
