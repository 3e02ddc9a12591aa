"""The command-line tools, one module each: `main(argv) -> exit code` and its parser.

pyproject.toml installs them as console scripts (llms-compress, llms-train, ...); the top-level scripts
(data/compress_data.py, utils/*.py, train_llms.py, ...) call the same `main`, so both take the same
arguments and print the same --help. Bundled defaults (configs, samples, eval files) are read from the
repository these modules belong to, never from the working directory.
"""

from __future__ import annotations

from llms_trainer.paths import REPO_ROOT  # noqa: F401 (the commands read bundled defaults from it)
