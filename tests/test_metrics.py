"""MetricsLogger: append-only metrics.jsonl, one PNG with a panel per metric, resume continues the curve."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from llms_trainer.metrics import MetricsLogger, metric_series, metrics_figure


class FakeAccelerator(SimpleNamespace):
    """Records what would go to trackers; is_main_process chooses the rank."""

    def __init__(self, is_main_process: bool = True):
        super().__init__(is_main_process=is_main_process, tracked=[])

    def log(self, values: dict, step: int | None = None) -> None:
        self.tracked.append((step, values))


def read_lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_lines_skipping_bad(path) -> list[tuple[int, float]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows.append((row["step"], row["train/loss"]))
    return rows


def visible_panels(figure) -> list[str]:
    return [ax.get_title() for ax in figure.axes if ax.get_visible()]


def test_log_appends_one_json_line_per_call(tmp_path):
    accelerator = FakeAccelerator()
    logger = MetricsLogger(tmp_path / "run", tmp_path / "img", "curves", accelerator)
    logger.log(1, {"train/loss": 2.5, "train/lr": 1e-3})
    logger.log(2, {"train/loss": float("nan"), "eval/损失": 1.25})
    lines = read_lines(tmp_path / "run" / "metrics.jsonl")
    assert [(line["step"], line["train/loss"]) for line in lines] == [(1, 2.5), (2, None)]
    assert lines[1]["eval/损失"] == 1.25 and all(isinstance(line["time"], float) for line in lines)
    assert accelerator.tracked == [(1, {"train/loss": 2.5, "train/lr": 1e-3}), (2, {"eval/损失": 1.25})]


def test_plot_draws_every_metric(tmp_path):
    logger = MetricsLogger(tmp_path, tmp_path / "img", "curves", FakeAccelerator())
    for step in range(1, 6):
        logger.log(step, {"train/loss": 3.0 / step, "train/lr": 1e-3, "eval/nll/ppl": math.inf})
    logger.log(5, {"eval/single_choice/acc": 0.5})
    path = logger.plot()
    assert path == tmp_path / "img" / "curves.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["curves.png"]  # temp file renamed away
    figure = metrics_figure(metric_series(logger.rows))
    assert visible_panels(figure) == ["loss (train, eval NLL)", "eval accuracy", "learning rate", "eval/nll/ppl"]
    assert all(ax.get_xlabel() == "optimizer step" for ax in figure.axes if ax.get_visible())
    steps, values = metric_series(logger.rows)["train/loss"]
    assert steps == [1, 2, 3, 4, 5] and values[-1] == pytest.approx(0.6)


def test_series_skip_non_finite_and_later_value_wins():
    rows = [{"step": 1, "loss": 4.0, "time": 0.0}, {"step": 2, "loss": None}, {"step": 3, "loss": 2.0},
            {"step": 3, "loss": 1.5}, {"step": 2, "ppl": float("nan")}]
    series = metric_series(rows)
    assert series["loss"] == ([1, 3], [4.0, 1.5])
    assert series["ppl"] == ([], [])
    assert "time" not in series and "step" not in series


def test_resume_reloads_the_earlier_curve(tmp_path):
    first = MetricsLogger(tmp_path, None, "run.png", FakeAccelerator())
    first.log(10, {"train/loss": 2.0})
    (tmp_path / "metrics.jsonl").open("a", encoding="utf-8").write('{"step": 20, "train/lo')  # crash mid-line
    with pytest.warns(UserWarning, match=r"metrics\.jsonl:2"):
        resumed = MetricsLogger(tmp_path, None, "run.png", FakeAccelerator())
    resumed.log(20, {"train/loss": 1.0})
    assert read_lines_skipping_bad(tmp_path / "metrics.jsonl") == [(10, 2.0), (20, 1.0)]
    assert metric_series(resumed.rows)["train/loss"] == ([10, 20], [2.0, 1.0])
    assert resumed.plot() == tmp_path / "run.png"


def test_only_the_main_process_writes(tmp_path):
    accelerator = FakeAccelerator(is_main_process=False)
    logger = MetricsLogger(tmp_path, tmp_path, "curves", accelerator)
    logger.log(1, {"train/loss": 1.0})
    assert logger.plot() is None
    assert list(tmp_path.iterdir()) == []


def test_resume_drops_replayed_steps_and_a_fresh_run_starts_a_new_file(tmp_path):
    first = MetricsLogger(tmp_path, None, "run.png", FakeAccelerator())
    for step, loss in [(10, 3.0), (20, 2.0), (30, 1.5)]:
        first.log(step, {"train/loss": loss})
    resumed = MetricsLogger(tmp_path, None, "run.png", FakeAccelerator())
    resumed.start_at(20)  # the checkpoint was at step 20: step 30 is trained and logged again
    resumed.log(30, {"train/loss": 1.4})
    assert [(r["step"], r["train/loss"]) for r in read_lines(tmp_path / "metrics.jsonl")] == [
        (10, 3.0), (20, 2.0), (30, 1.4)]
    fresh = MetricsLogger(tmp_path, None, "run.png", FakeAccelerator())
    fresh.start_at(0)
    fresh.log(10, {"train/loss": 9.0})
    assert [r["train/loss"] for r in read_lines(tmp_path / "metrics.jsonl")] == [9.0]
    assert len(read_lines(tmp_path / "metrics.prev.jsonl")) == 3
    assert metric_series(fresh.rows)["train/loss"] == ([10], [9.0])


def test_plot_leads_with_the_loss_and_groups_related_curves():
    from llms_trainer.metrics import panel_plan

    names = ["data/a/epochs", "data/a/share", "data/b/share", "eval/nll/loss", "eval/nll/ppl",
             "eval/single_choice/acc", "eval/single_choice/zh/acc", "train/grad_norm", "train/loss", "train/lr",
             "train/tokens_per_s", "train/tokens_seen", "train/accuracy"]
    plan = panel_plan(names)
    assert plan[0] == ("loss (train, eval NLL)", ["eval/nll/loss", "train/loss"])
    assert [title for title, _ in plan[1:7]] == ["eval accuracy", "learning rate", "grad norm", "tokens/s",
                                                 "data share of tokens", "data epochs"]
    assert plan[5][1] == ["data/a/share", "data/b/share"]
    assert [title for title, _ in plan[7:]] == ["train/accuracy", "train/tokens_seen", "eval/nll/ppl"]
    assert sorted(n for _, group in plan for n in group) == sorted(names)  # every metric drawn once
