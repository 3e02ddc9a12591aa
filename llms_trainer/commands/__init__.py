"""The command-line tools, one module each: `main(argv) -> exit code` and its parser.

pyproject.toml installs them as console scripts (llms-compress, llms-train, ...); the top-level scripts
(data/compress_data.py, utils/*.py, train_llms.py, ...) call the same `main`, so both take the same
arguments and print the same --help. Bundled defaults (configs, samples, eval files) are read from the
repository these modules belong to, never from the working directory.
"""

from __future__ import annotations

from pathlib import Path

# The checkout holding configs/, data/, eval_data/ and utils/: the same directory as
# llms_trainer.config.REPO_ROOT, named here because config imports torch and --help should stay instant.
REPO_ROOT = Path(__file__).resolve().parents[2]
