"""The sampler viewer in a real browser: streamlit on 127.0.0.1, the system Chromium driven by Playwright."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from utils.sampler_viewer.browser import chromium_page, find_chromium, streamlit_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif((find_chromium() is None or importlib.util.find_spec("playwright") is None)
                       and os.environ.get("CI") != "true",
                       reason="chromium or playwright missing: run .ci/install_browser.sh and pip install -r "
                       "requirements.txt (CI does, and fails without them)"),
]


def test_set_a_ratio_and_save_in_chromium(viewer_env, tmp_path):
    env = {k: str(v) for k, v in viewer_env.items()}
    policy = viewer_env["SAMPLER_VIEWER_POLICY_DIR"] / "browser_mix.json"
    with streamlit_server(env, tmp_path / "streamlit.log") as url, chromium_page() as page:
        page.open(url, ready_text="news %")
        assert page.page.locator("h1").inner_text() == "Sampler viewer"
        page.type_into("news %", "30")
        page.wait_for_row("news", "30")  # wait for each rerun, or the next input races it
        page.type_into("wiki %", "50")
        page.wait_for_row("news", "30", "37.50")  # ratio and share after normalising 30 / 80
        page.wait_for_row("wiki", "50", "62.50")
        page.wait_for_text("20.00 %")  # unallocated remainder
        page.type_into("Policy name", "browser_mix")
        page.wait_for_text(f"Writes {policy}")  # the page took the new name
        page.click_button("Save policy")
        page.wait_for_text(f"Saved {policy}")
        shot = page.screenshot(tmp_path / "sampler_viewer.png")
    assert json.loads(policy.read_text()) == {"news": 0.375, "wiki": 0.625}

    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] >= 1000 and pixels.shape[1] == 1400
    assert pixels.std() > 0.05  # content was rendered, not a blank page
