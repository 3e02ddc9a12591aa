#!/usr/bin/env bash
# Install Debian's chromium (used headless by tests/viewer/test_browser.py and
# scripts/screenshot_sampler_viewer.py) when it is missing. Idempotent: does nothing if present.
# Playwright (requirements.txt) drives this chromium through `executable_path`: never run
# `playwright install`, which would download a browser of its own.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    echo "chromium present: $(command -v chromium)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
echo "installed chromium: $(command -v chromium)"
