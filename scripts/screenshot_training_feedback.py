"""Screenshot of the sampler viewer's "Training feedback" tab for the README (docs/training_feedback.png).

Starts `streamlit run utils/sampler_viewer/web.py` on 127.0.0.1, opens the tab in headless Chromium, shows
the run given by --run and captures the page. It never clicks "Save proposed policy", so nothing under
configs/ changes. The run the README shows is the demo's pretraining with held-out records per source:

  python train_llms.py --train_config configs/pretrain_configs/tiny_demo.yaml \\
      --model_config configs/model_configs/tiny_llama.json eval.source_holdout_records=4 eval_interval=25 \\
      work_dir=work_dirs/tiny_feedback
  python scripts/screenshot_training_feedback.py --run work_dirs/tiny_feedback

Needs Debian's chromium (.ci/install_browser.sh), driven by Playwright. The PNG is reduced to 256 colours
(it stays a few hundred KB at most).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.sampler_viewer.browser import BrowserError, chromium_page, streamlit_server  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="work_dirs/tiny_feedback", help="the work_dir to show (default: %(default)s)")
    parser.add_argument("--output", default="docs/training_feedback.png", help="PNG to write (default: %(default)s)")
    parser.add_argument("--width", type=int, default=1200, help="page width in pixels (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run, output = (p if p.is_absolute() else ROOT / p for p in map(Path, (args.run, args.output)))
    if not (run / "metrics.jsonl").is_file():
        print(f"error: {run}/metrics.jsonl missing; train the run first (see --help)", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="sampler-viewer-") as tmp:
            with streamlit_server({}, Path(tmp) / "streamlit.log") as url, chromium_page(width=args.width) as page:
                page.open(url, ready_text="Sampler viewer")
                page.show_feedback(str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run))
                page.wait_for_text("measured:")
                partial = Path(tmp) / "page.png"
                page.screenshot(partial, width=args.width)
            from PIL import Image

            output.parent.mkdir(parents=True, exist_ok=True)
            Image.open(partial).convert("RGB").quantize(256).save(output.with_name(f".{output.name}.partial"),
                                                                 format="PNG", optimize=True)
            os.replace(output.with_name(f".{output.name}.partial"), output)
    except (BrowserError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {output} ({output.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
