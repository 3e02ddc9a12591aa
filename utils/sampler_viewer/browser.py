"""Drive the sampler viewer in headless Chromium over the DevTools protocol (browser test, README screenshot).

Streamlit sends page content over a websocket after load, so a plain `chromium --screenshot` shows a blank page;
here we start streamlit and Chromium on 127.0.0.1, wait for the content, type into inputs like a user, click
buttons and capture PNGs. Only websocket-client is needed (no browser downloads, no driver binary).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import websocket

WEB_PY = Path(__file__).resolve().parent / "web.py"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]
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


def _get(url: str, timeout_s: float = 2.0) -> str:
    with _NO_PROXY.open(url, timeout=timeout_s) as response:
        return response.read().decode()


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
        while True:
            if proc.poll() is not None:
                raise BrowserError(f"streamlit exited with code {proc.returncode}; see {log_path}")
            try:
                if _get(f"{url}/_stcore/health").strip() == "ok":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BrowserError(f"streamlit did not answer on {url} within {timeout_s:.0f} s; see {log_path}")
            time.sleep(0.3)
        yield url
    finally:
        _stop(proc)


class Page:
    """One Chromium tab spoken to over the DevTools protocol."""

    def __init__(self, ws: websocket.WebSocket, timeout_s: float):
        self.ws, self.timeout_s, self._next_id = ws, timeout_s, 0

    def send(self, method: str, **params) -> dict:
        self._next_id += 1
        self.ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})
        raise BrowserError(f"{method}: no answer within {self.timeout_s:.0f} s")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            reason = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"script failed: {reason}\nscript: {expression[:300]}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout_s: float = 30):
        """Poll a JS expression until it is truthy (and streamlit is not running the script); returns it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(f"(() => {{ try {{ if (document.querySelector('[data-testid=\"stStatusWidget\"] "
                                  f"button')) return null; const v = ({expression}); "
                                  "return v instanceof Node ? true : v; } catch (e) { return null; } })()")
            if value:
                return value
            time.sleep(0.25)
        text = self.evaluate("document.body ? document.body.innerText.slice(0, 2000) : ''")
        raise BrowserError(f"timed out after {timeout_s:.0f} s waiting for {what}; page text: {text!r}")

    def wait_for_text(self, text: str, timeout_s: float = 30) -> None:
        self.wait_for(f"document.body.innerText.includes({json.dumps(text)})", repr(text), timeout_s)

    def wait_for_row(self, *cells: str, timeout_s: float = 30) -> None:
        """Wait until some table row starts with these cell texts (e.g. source name, ratio)."""
        prefix = json.dumps("|".join(cells) + "|")
        self.wait_for("[...document.querySelectorAll('tr')].some(tr => ([...tr.cells].map(c => c.innerText.trim())"
                      f".join('|') + '|').startsWith({prefix}))", f"a table row {cells}", timeout_s)

    def open(self, url: str, ready_text: str, timeout_s: float = 60) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for_text(ready_text, timeout_s)

    def type_into(self, label: str, text: str) -> None:
        """Replace the text of the input labelled `label` as a user would, then press Enter.

        Streamlit reruns the script after Enter; wait for its result (e.g. `wait_for_row`) before the next input,
        or the rerun may overwrite what was typed meanwhile.
        """
        selector = json.dumps(f'input[aria-label="{label}"]')
        self.wait_for(f"document.querySelector({selector})", f"input {label!r}")
        self.evaluate(f"(() => {{ const el = document.querySelector({selector}); el.focus(); el.select(); }})()")
        self.send("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)

    def click_button(self, text: str) -> None:
        finder = ("[...document.querySelectorAll('button')].find(b => b.innerText.trim() === "
                  f"{json.dumps(text)})")
        self.wait_for(finder, f"button {text!r}")
        self.evaluate(f"{finder}.click()")

    def screenshot(self, path: Path, width: int = 1400) -> Path:
        """A PNG of the whole page: the viewport is grown to the height of streamlit's content first."""
        self.evaluate("document.activeElement && document.activeElement.blur()")
        height = self.evaluate("Math.max(...[...document.querySelectorAll('[data-testid=\"stMainBlockContainer\"], "
                               "[data-testid=\"stSidebarContent\"]')].map(e => e.scrollHeight), 600)")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=int(height) + 80, deviceScaleFactor=1,
                  mobile=False)
        time.sleep(1.0)  # let charts re-layout at the new size
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


@contextmanager
def chromium_page(width: int = 1400, height: int = 1000, timeout_s: float = 30) -> Iterator[Page]:
    """Headless Chromium with a fresh profile; yields its first tab; always stops it."""
    chromium = find_chromium()
    if chromium is None:
        raise BrowserError("chromium not found; install it with .ci/install_browser.sh (apt-get install chromium)")
    profile = Path(tempfile.mkdtemp(prefix="viewer-chromium-"))
    proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             "--remote-debugging-address=127.0.0.1", f"--window-size={width},{height}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ws = None
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + timeout_s
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BrowserError(f"chromium did not open its DevTools port (exit code {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(_get(f"http://127.0.0.1:{port}/json/list"))
        target = next(t for t in targets if t.get("type") == "page")
        ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=timeout_s, suppress_origin=True)
        page = Page(ws, timeout_s)
        page.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        yield page
    finally:
        if ws is not None:
            ws.close()
        _stop(proc)
        shutil.rmtree(profile, ignore_errors=True)
