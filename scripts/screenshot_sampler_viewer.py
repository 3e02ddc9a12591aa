"""Screenshot of the sampler viewer for the README (docs/sampler_viewer.png), taken in headless Chromium.

Starts `streamlit run utils/sampler_viewer/web.py` on 127.0.0.1 with the bundled shards (running
data/compress_data.py first when data/pretrain_data is missing), counts tokens with the demo tokenizer when it
exists, types the ratios and captures the whole page. It never clicks "Save policy", so nothing under configs/
changes. Needs Debian's chromium (.ci/install_browser.sh), driven by Playwright.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llms_trainer.sampler_viewer.sources import ViewerError, scan_data_dir  # noqa: E402
from utils.sampler_viewer.browser import BrowserError, chromium_page, streamlit_server  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data/pretrain_data", help="sources to show (default: bundled shards)")
    parser.add_argument("--tokenizer", default="configs/tokenizers/demo_base",
                        help="tokenizer dir for token counts; skipped when missing")
    parser.add_argument("--ratio", action="append", default=[], metavar="SOURCE=PERCENT",
                        help="ratio to type in (repeatable; default: equal whole percents for every source)")
    parser.add_argument("--output", default="docs/sampler_viewer.png", help="PNG to write")
    parser.add_argument("--width", type=int, default=1400, help="page width in pixels")
    return parser.parse_args(argv)


def ensure_bundled_shards(data_dir: Path) -> None:
    """Compress the bundled samples when the default data dir has not been made yet."""
    if data_dir == ROOT / "data/pretrain_data" and not data_dir.is_dir():
        print("data/pretrain_data missing: running data/compress_data.py")
        subprocess.run([sys.executable, str(ROOT / "data/compress_data.py")], check=True, cwd=ROOT)


def ratios_to_type(args: argparse.Namespace, names: list[str]) -> dict[str, str]:
    if not args.ratio:
        return dict.fromkeys(names, str(100 // len(names)))
    ratios = {}
    for item in args.ratio:
        name, sep, value = item.partition("=")
        if not sep or name not in names:
            raise ViewerError(f"--ratio {item!r}: expected SOURCE=PERCENT with SOURCE one of {', '.join(names)}")
        ratios[name] = value
    return ratios


def shown(path: Path) -> str:
    """Paths inside the repository as the page shows them by default (relative to the root)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def take_screenshot(args: argparse.Namespace, data_dir: Path, tokenizer: Path, output: Path) -> None:
    sources = scan_data_dir(data_dir, os.path.normpath(shown(tokenizer)))[0]  # the key the page uses
    names, uncounted = [s.name for s in sources], sum(s.tokens is None for s in sources)
    ratios = ratios_to_type(args, names)
    with tempfile.TemporaryDirectory(prefix="sampler-viewer-") as tmp:
        env = {"SAMPLER_VIEWER_DATA_DIR": shown(data_dir), "SAMPLER_VIEWER_TOKENIZER": shown(tokenizer),
               "SAMPLER_VIEWER_POLICY_DIR": "configs/sample_policy"}
        with streamlit_server(env, Path(tmp) / "streamlit.log") as url, chromium_page(width=args.width) as page:
            page.open(url, ready_text=f"{names[0]} %")
            if tokenizer.is_dir() and uncounted:
                page.click_button(f"Count tokens ({uncounted} source(s))")
                page.wait_for_text("available (tokens)", timeout_s=300)
            for name, value in ratios.items():
                page.type_into(f"{name} %", value)
                page.wait_for_row(name, value)  # the rerun has finished before the next input changes
            partial = output.with_name(f".{output.name}.partial")
            page.screenshot(partial, width=args.width)
            os.replace(partial, output)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir, tokenizer, output = (p if p.is_absolute() else ROOT / p
                                   for p in map(Path, (args.data_dir, args.tokenizer, args.output)))
    try:
        ensure_bundled_shards(data_dir)
        output.parent.mkdir(parents=True, exist_ok=True)
        take_screenshot(args, data_dir, tokenizer, output)
    except (ViewerError, BrowserError, subprocess.CalledProcessError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
