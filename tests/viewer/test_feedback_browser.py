"""The "Training feedback" tab in a real browser: a real run's curves and proposal in headless Chromium, the
proposal saved, a missing run a message on the page."""

from __future__ import annotations

from llms_trainer.data.mixing import load_policy
from tests.viewer.run_support import feedback_run  # noqa: F401 (fixture)
from tests.viewer.test_browser import pytestmark  # noqa: F401 (the same marks: slow, skipped without chromium)
from utils.sampler_viewer.browser import chromium_page, streamlit_server


def test_training_feedback_of_a_run_in_chromium(viewer_env, feedback_run, tmp_path):  # noqa: F811
    env = {k: str(v) for k, v in viewer_env.items()}
    policy = viewer_env["SAMPLER_VIEWER_POLICY_DIR"] / f"proposed_{feedback_run.name}.json"
    with streamlit_server(env, tmp_path / "streamlit.log") as url, chromium_page() as page:
        page.open(url, ready_text="news %")
        page.show_feedback(str(feedback_run))
        page.wait_for_text("measured: held-out nats/char")
        charts = page.page.locator('[data-testid="stVegaLiteChart"] >> visible=true')
        assert charts.count() == 2  # the curves and the shares, drawn
        page.click_button("Save proposed policy")
        page.wait_for_text(f"Saved {policy}")
        shot = page.screenshot(tmp_path / "feedback.png")
        page.type_into("Run work_dir(s), comma-separated", str(tmp_path / "nowhere"))
        page.wait_for_text("no such run directory")
    assert set(load_policy(policy, ["news", "wiki"])) == {"news", "wiki"}
    assert (policy.parent / f"proposed_{feedback_run.name}.provenance.yaml").is_file()

    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[1] == 1400 and pixels.std() > 0.05  # content was rendered, not a blank page
