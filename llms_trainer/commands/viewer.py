"""Start the sampler viewer: `streamlit run utils/sampler_viewer/web.py` of this repository, from any directory.

  llms-viewer [--server.port 8001] [any other `streamlit run` option]

Every argument but --help goes to `streamlit run` unchanged (see `streamlit run --help`). The page listens on
127.0.0.1 only (utils/sampler_viewer/.streamlit/config.toml), because it writes policy files; add
`--server.address 0.0.0.0` to serve other machines (anyone who reaches the port can then save policies).
Defaults come from env vars: SAMPLER_VIEWER_DATA_DIR (data/pretrain_data), SAMPLER_VIEWER_TOKENIZER
(configs/tokenizers/demo_base), SAMPLER_VIEWER_POLICY_DIR (configs/sample_policy); relative paths are read
from the repository root.
"""

from __future__ import annotations

import sys

from llms_trainer.cli import make_parser
from llms_trainer.commands import REPO_ROOT

WEB_PY = REPO_ROOT / "utils/sampler_viewer/web.py"


def streamlit_args(options: list[str]) -> list[str]:
    """The `streamlit` arguments that run the page with the user's options; streamlit reads the page's own
    .streamlit/config.toml (the 127.0.0.1 binding) whatever the working directory."""
    return ["run", str(WEB_PY), *options]


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.allow_abbrev = False  # `--h...` options belong to streamlit, not to --help
    _, options = parser.parse_known_args(argv)
    if not WEB_PY.is_file():
        print(f"error: {WEB_PY} not found: llms-viewer runs from a checkout of the repository "
              "(pip install -e . there)", file=sys.stderr)
        return 2
    from streamlit.web import cli as streamlit_cli

    # streamlit's command line ends the process itself: SystemExit with its exit code (2 for a bad option)
    streamlit_cli.main(streamlit_args(options), prog_name="streamlit")
    return 0
