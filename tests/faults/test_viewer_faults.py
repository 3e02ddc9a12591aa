"""Sampler viewer faults: listening on every interface, writing policies anywhere, stale default ratios, bad
pasted sizes, a damaged shard."""
# ruff: noqa: F811 - the viewer's fixtures are imported from tests/viewer/conftest.py and used as arguments

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.viewer.conftest import WEB_PY, app, raw_dir, shard_dir, viewer_env  # noqa: F401


def _texts(elements) -> str:
    """The elements' Markdown bodies as the page shows them (the viewer escapes every punctuation mark)."""
    return re.sub(r"\\(.)", r"\1", " | ".join(str(e.value) for e in elements))


def _ratio(app, name: str) -> str:
    return next(t for t in app.text_input if t.label == f"{name} %").value


def _browser_available() -> bool:
    from utils.sampler_viewer.browser import find_chromium

    return find_chromium() is not None and importlib.util.find_spec("playwright") is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- 5. binding and where policies are written


def test_viewer_listens_on_this_machine_only_by_default(tmp_path, viewer_env):
    """The README command, without --server.address, run from another directory."""
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(WEB_PY), "--server.headless", "true",
           "--server.port", str(port), "--server.fileWatcherType", "none"]
    with open(tmp_path / "streamlit.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _connects("127.0.0.1", port):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "streamlit.log").read_text()
            time.sleep(0.2)
        # 127.0.0.2 is this machine too, but another address: a server bound to every interface accepts it
        assert not _connects("127.0.0.2", port)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def test_policy_directory_outside_the_configured_one_is_refused(app, viewer_env, tmp_path):
    root = viewer_env["SAMPLER_VIEWER_POLICY_DIR"]
    for outside in (tmp_path / "elsewhere", root / ".." / "escaped"):
        app.text_input(key="policy_dir").set_value(str(outside)).run()
        assert not app.exception
        assert f"is outside the policy directory {root}" in _texts(app.error)
        assert "SAMPLER_VIEWER_POLICY_DIR" in _texts(app.error)
        assert not [b for b in app.button if b.key == "save"]  # nothing to click
    assert not (tmp_path / "elsewhere").exists() and not (root.parent / "escaped").exists()
    app.text_input(key="policy_dir").set_value(str(root / "team")).run()  # a folder inside still works
    app.button(key="save").click().run()
    assert not app.error and json.loads((root / "team" / "pretrain_mix.json").read_text()).keys() == {"news", "wiki"}


def test_symlink_out_of_the_policy_directory_is_refused(app, viewer_env, tmp_path):
    root = viewer_env["SAMPLER_VIEWER_POLICY_DIR"]
    (tmp_path / "elsewhere").mkdir()
    root.mkdir(parents=True)
    (root / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    app.text_input(key="policy_name").set_value("link/mix").run()
    assert "is outside the policy directory" in _texts(app.error)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_save_policy_checks_the_directory_itself(tmp_path):
    from llms_trainer.sampler_viewer.plan import save_policy
    from llms_trainer.sampler_viewer.sources import ViewerError

    with pytest.raises(ViewerError, match="is outside the policy directory"):
        save_policy({"a": 1.0}, tmp_path / "elsewhere" / "p.json", policy_root=tmp_path / "policies")
    assert not (tmp_path / "elsewhere").exists()


# ---------------------------------------------------------------- 6. default ratios follow the counted tokens


def test_default_ratios_become_token_shares_after_counting(app, shard_dir, tiny_tokenizer_dir):
    raw = {n: json.loads((shard_dir / n / "manifest.json").read_text())["raw_bytes"] for n in ("news", "wiki")}
    assert float(_ratio(app, "news")) == pytest.approx(100 * raw["news"] / sum(raw.values()), abs=0.01)
    app.text_input(key="tokenizer").set_value(str(tiny_tokenizer_dir)).run()
    app.button(key="count_tokens").click().run()
    assert not app.exception and not app.error
    tokens = {n: json.loads((shard_dir / n / "token_counts.json").read_text())[str(tiny_tokenizer_dir)]["tokens"]
              for n in ("news", "wiki")}
    token_share = 100 * tokens["news"] / sum(tokens.values())
    assert abs(token_share - 100 * raw["news"] / sum(raw.values())) > 0.5  # the two units really differ here
    assert float(_ratio(app, "news")) == pytest.approx(token_share, abs=0.01)
    assert float(_ratio(app, "news")) + float(_ratio(app, "wiki")) == pytest.approx(100)
    assert app.table[1].value.to_dict(orient="index")["news"]["original %"] == f"{token_share:.2f}"


def test_a_typed_ratio_is_kept_when_tokens_are_counted(app, tiny_tokenizer_dir):
    next(t for t in app.text_input if t.label == "wiki %").set_value("70")
    app.text_input(key="tokenizer").set_value(str(tiny_tokenizer_dir)).run()
    before_news = _ratio(app, "news")
    app.button(key="count_tokens").click().run()
    assert _ratio(app, "wiki") == "70"  # the user's number
    assert _ratio(app, "news") != before_news  # the untouched default followed the token counts


# ---------------------------------------------------------------- 7. bad input typed into the page or found on disk


@pytest.mark.parametrize("text, message", [
    ("{news: 256K, wiki: 768K", "pasted sizes start with '{' but do not end with '}'"),
    ("news,wiki\n256K,-2", "is not a number with an optional K/M/G/T unit"),
    ("news,news\n1,2", "source 'news' is pasted twice"),
])
def test_bad_pasted_sizes_are_an_inline_message_and_nothing_can_be_saved(app, viewer_env, text, message):
    app.text_area(key="pasted").set_value(text).run()
    assert not app.exception and message in _texts(app.error)
    assert not [b for b in app.button if b.key == "save"]
    assert not viewer_env["SAMPLER_VIEWER_POLICY_DIR"].exists()


def test_counting_tokens_of_a_damaged_shard_names_it_on_the_page_and_caches_nothing(app, shard_dir,
                                                                                  tiny_tokenizer_dir):
    shard = sorted((shard_dir / "news").glob("*.jsonl.zst"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    shard.write_bytes(bytes(data))
    app.text_input(key="tokenizer").set_value(str(tiny_tokenizer_dir)).run()
    app.button(key="count_tokens").click().run()
    assert not app.exception
    assert f"news: cannot read its data ({shard}: corrupt shard (sha256 does not match manifest)" in _texts(app.error)
    assert not (shard_dir / "news" / "token_counts.json").exists()


# ---------------------------------------------------------------- 10. source names are shown literally


MARKDOWN_NAMES = ("**bold** [link](javascript:alert(2))",
                  "_em_ [site](https:x.y) :red[red] :tada: $x^2$ <img src=x onerror=alert(1)> `tick`")


def _type_ratio(page, name: str, text: str) -> None:
    """Type into the ratio input whose visible label reads `name %` (its aria-label is the Markdown source)."""
    page.settle()
    box = page.page.locator('[data-testid="stTextInput"]').filter(
        has=page.page.locator("label", has_text=re.compile(f"^{re.escape(name)} %$")))
    box.locator("input").fill(text)
    box.locator("input").press("Enter")


@pytest.mark.slow
@pytest.mark.skipif(not _browser_available(), reason="chromium or playwright missing: run .ci/install_browser.sh")
def test_source_names_that_spell_markdown_are_shown_literally_in_chromium(tmp_path, shard_dir, viewer_env):
    """Directory names holding Markdown, Streamlit's :color[]/:emoji:/$LaTeX$ and HTML: every place the page
    shows a name (sources table, ratio label, plan table, left-out warning) shows its characters, and the page
    holds no link, bold text, image or dialog made from them."""
    from utils.sampler_viewer.browser import chromium_page, streamlit_server

    for name, source in zip(MARKDOWN_NAMES, ("news", "wiki"), strict=True):
        (shard_dir / source).rename(shard_dir / name)
    env = {k: str(v) for k, v in viewer_env.items()}
    bold, other = MARKDOWN_NAMES
    with streamlit_server(env, tmp_path / "streamlit.log") as url, chromium_page() as page:
        dialogs: list[str] = []
        page.page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.open(url, ready_text="Ratios")
        page.wait_for_row(bold, "shards")  # the sources table
        _type_ratio(page, other, "0")  # the ratio label shows the literal name
        page.wait_for_row(other, "0", "0.00")  # the plan table
        _type_ratio(page, bold, "40")
        page.wait_for_row(bold, "40", "100.00")
        page.wait_for_text(f"Left out (ratio 0): {other}.")
        main = page.page.locator('[data-testid="stMain"]')
        found = main.locator("a[href]:not([href^='#']), strong, em, img, code:has-text('tick'), .katex")
        assert found.count() == 0, [found.nth(i).evaluate("e => e.outerHTML") for i in range(found.count())]
        assert main.inner_text().count(bold) >= 2 and dialogs == []
