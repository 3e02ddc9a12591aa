"""Drive the sampler viewer in headless Chromium with Playwright (browser test, README screenshot).

Streamlit sends the page over a websocket after load and reruns the script after every input, so each step
waits until no script run is pending (the `data-test-script-state` of the app root) and then for the content
it expects; typing during a rerun could otherwise be overwritten by it. Playwright drives the system
Chromium (Debian package `chromium`, installed by .ci/install_browser.sh) and never downloads a browser.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WEB_PY = Path(__file__).resolve().parent / "web.py"
CHROMIUM_ARGS = ["--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--no-proxy-server"]
_SETTLED = '[data-testid="stApp"][data-test-script-state="notRunning"][data-test-connection-state="CONNECTED"]'
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BrowserError(RuntimeError):
    """Streamlit or Chromium did not start, or the page did not reach the expected state in time."""


def find_chromium() -> str | None:
    """Path of the system Chromium (Debian package `chromium`), or None."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with _NO_PROXY.open(f"{url}/_stcore/health", timeout=2.0) as response:
            return response.read().decode().strip() == "ok"
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process started by this module in its own session, and its children."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def streamlit_server(env: dict[str, str], log_path: Path, timeout_s: float = 90) -> Iterator[str]:
    """Run the viewer with extra env vars on a free 127.0.0.1 port; yields its URL; always stops it."""
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(WEB_PY), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(url):
            if proc.poll() is not None:
                raise BrowserError(f"streamlit exited with code {proc.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise BrowserError(f"streamlit did not answer on {url} within {timeout_s:.0f} s; see {log_path}")
            time.sleep(0.3)
        yield url
    finally:
        _stop(proc)


class ViewerPage:
    """The viewer in one Chromium tab; `page` is the Playwright page for anything else."""

    def __init__(self, page):
        self.page = page

    def settle(self) -> None:
        """Wait until the app is connected and no script run is running or requested."""
        self.page.wait_for_selector(_SETTLED, state="attached")

    def open(self, url: str, ready_text: str, timeout_s: float = 60) -> None:
        self.page.goto(url)
        self.wait_for_text(ready_text, timeout_s)

    def wait_for_text(self, text: str, timeout_s: float = 30) -> None:
        from playwright.sync_api import expect

        expect(self.page.locator("body")).to_contain_text(text, timeout=timeout_s * 1000)
        self.settle()

    def wait_for_row(self, *cells: str, timeout_s: float = 30) -> None:
        """Wait until some table row starts with these cell texts (e.g. source name, ratio)."""
        self.page.wait_for_function(
            "cells => [...document.querySelectorAll('tr')].some(tr => "
            "[...tr.cells].slice(0, cells.length).map(c => c.innerText.trim()).join('|') === cells.join('|'))",
            arg=list(cells), timeout=timeout_s * 1000)
        self.settle()

    def type_into(self, label: str, text: str) -> None:
        """Replace the text of the input labelled `label` and press Enter, as a user would.

        Streamlit reruns the script after Enter: wait for its result (`wait_for_row`, `wait_for_text`)
        before the next input.
        """
        self.settle()
        field = self.page.get_by_label(label, exact=True)
        field.fill(text)
        field.press("Enter")

    def show_feedback(self, runs: str) -> None:
        """Open the "Training feedback" tab and show `runs` (work_dirs, comma-separated); waits for the page's
        answer: the runs' curves or a message."""
        self.settle()
        self.page.get_by_role("tab", name="Training feedback").click()
        self.type_into("Run work_dir(s), comma-separated", runs)
        self.page.wait_for_selector('[data-testid="stAlert"], [data-testid="stVegaLiteChart"] >> visible=true')
        self.settle()

    def click_button(self, text: str) -> None:
        self.settle()
        self.page.get_by_role("button", name=text, exact=True).click()

    def screenshot(self, path: Path, width: int = 1400) -> Path:
        """A PNG of the whole page: the viewport is grown to the height of streamlit's content first."""
        self.settle()
        self.page.evaluate("document.activeElement && document.activeElement.blur()")
        height = self.page.evaluate(
            "Math.max(...[...document.querySelectorAll('[data-testid=\"stMainBlockContainer\"], "
            "[data-testid=\"stSidebarContent\"]')].map(e => e.scrollHeight), 600)")
        self.page.set_viewport_size({"width": width, "height": int(height) + 80})
        self.page.wait_for_timeout(1000)  # let charts re-layout at the new size
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), type="png")
        return path


@contextmanager
def chromium_page(width: int = 1400, height: int = 1000, timeout_s: float = 30) -> Iterator[ViewerPage]:
    """Headless system Chromium driven by Playwright; yields one page; always closes the browser.

    Playwright errors (a timeout waiting for content, a crash) are raised as BrowserError with the page text.
    """
    chromium = find_chromium()
    if chromium is None:
        raise BrowserError("chromium not found; install it with .ci/install_browser.sh (apt-get install chromium)")
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS,
                                                 timeout=timeout_s * 1000)
        except PlaywrightError as err:
            raise BrowserError(f"{chromium} did not start under Playwright: {err}") from err
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(timeout_s * 1000)
            try:
                yield ViewerPage(page)
            except PlaywrightError as err:
                raise BrowserError(f"{err.message.splitlines()[0]}; page text: {_page_text(page)!r}") from err
        finally:
            browser.close()


def _page_text(page) -> str:
    """The start of the page's visible text (for error messages), or "" when the page cannot answer."""
    try:
        return page.evaluate("document.body ? document.body.innerText.slice(0, 2000) : ''")
    except Exception:  # noqa: BLE001 - only used while reporting another error
        return ""
