"""The command-line tools, one module each: `main(argv) -> exit code` and its parser.

pyproject.toml installs them as console scripts (llms-compress, llms-train, ...); the top-level scripts
(data/compress_data.py, utils/*.py, train_llms.py, ...) call the same `main`, so both take the same
arguments and print the same --help. Bundled defaults (configs, samples, eval files) are read from the
repository these modules belong to, never from the working directory.
"""

from __future__ import annotations

from pathlib import Path

# The checkout holding configs/, data/, eval_data/ and utils/: the same directory as
# The repository root (bundled configs, tokenizers, sample data); config.py imports it from here, which
# keeps this package light (no torch) so every --help stays instant.
REPO_ROOT = Path(__file__).resolve().parents[2]
