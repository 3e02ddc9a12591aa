"""The sampler viewer page, run by streamlit's AppTest: load a dir, change ratios, save, and every bad input."""

from __future__ import annotations

import json
import re

import pytest

from llms_trainer.data.mixing import load_policy


def _table(app, index: int) -> dict[str, dict[str, str]]:
    """A st.table as {row: {column: text}}."""
    return app.table[index].value.to_dict(orient="index")


def _texts(elements) -> str:
    """The elements' Markdown bodies as the page shows them (the viewer escapes every punctuation mark)."""
    return re.sub(r"\\(.)", r"\1", " | ".join(str(e.value) for e in elements))


def _ratio(app, name: str):
    """The ratio input of a source (found by its label)."""
    return next(t for t in app.text_input if t.label == f"{name} %")


def _set_ratios(app, **percents: str):
    for name, text in percents.items():
        _ratio(app, name).set_value(text)
    return app.run()


def test_loads_the_shard_dir_with_sizes_records_and_natural_ratios(app, shard_dir):
    assert not app.exception and not app.error
    sources = _table(app, 0)
    manifest = json.loads((shard_dir / "wiki" / "manifest.json").read_text())
    assert sources["wiki"]["records"] == "60" and sources["news"]["records"] == "20"
    assert sources["wiki"]["raw MB"] == f"{manifest['raw_bytes'] / 2**20:,.3f}"
    assert sources["wiki"]["tokens"] == "—"
    ratios = {name: float(_ratio(app, name).value) for name in ("news", "wiki")}
    news_bytes = json.loads((shard_dir / "news" / "manifest.json").read_text())["raw_bytes"]
    assert ratios["news"] == pytest.approx(100 * news_bytes / (news_bytes + manifest["raw_bytes"]), abs=0.01)
    assert sum(ratios.values()) == pytest.approx(100)
    assert "available (raw MB)" in _table(app, 1)["wiki"]  # tokens unknown: the unit says raw bytes


def test_raw_jsonl_dir_is_read_too(app, raw_dir):
    app.text_input(key="data_dir").set_value(str(raw_dir)).run()
    sources = _table(app, 0)
    assert (sources["news"]["kind"], sources["news"]["records"], sources["news"]["compressed MB"]) == ("jsonl", "20", "—")


def test_changing_a_ratio_updates_the_plan_and_save_writes_the_trainers_format(app, viewer_env):
    _set_ratios(app, news="30", wiki="50")
    assert app.metric[0].label == "Unallocated" and app.metric[0].value == "20.00 %"
    plan = _table(app, 1)
    assert (plan["news"]["share %"], plan["wiki"]["share %"]) == ("37.50", "62.50")
    path = viewer_env["SAMPLER_VIEWER_POLICY_DIR"] / "pretrain_mix.json"
    assert f"Writes `{path}`" in _texts(app.caption) and not path.exists()
    app.button(key="save").click().run()
    assert str(path) in _texts(app.success)
    assert json.loads(path.read_text()) == {"news": 0.375, "wiki": 0.625}
    assert load_policy(path, ["news", "wiki"]) == pytest.approx({"news": 0.375, "wiki": 0.625})


def test_ratio_zero_leaves_the_source_out_and_says_so(app, viewer_env):
    _set_ratios(app, news="0", wiki="70")
    assert "Left out (ratio 0): news" in _texts(app.warning)
    app.text_input(key="policy_name").set_value("team/wiki_only").run()
    app.button(key="save").click().run()
    path = viewer_env["SAMPLER_VIEWER_POLICY_DIR"] / "team" / "wiki_only.json"
    assert json.loads(path.read_text()) == {"wiki": 1.0}


def test_saving_over_an_existing_file_asks_first(app, viewer_env):
    path = viewer_env["SAMPLER_VIEWER_POLICY_DIR"] / "pretrain_mix.json"
    _set_ratios(app, news="50", wiki="50").button(key="save").click().run()
    _set_ratios(app, news="10", wiki="90").button(key="save").click().run()
    assert "exists. Overwrite it?" in _texts(app.warning)
    assert json.loads(path.read_text()) == {"news": 0.5, "wiki": 0.5}
    app.button(key="cancel").click().run()
    assert "Not saved." in _texts(app.info) and json.loads(path.read_text()) == {"news": 0.5, "wiki": 0.5}
    app.button(key="save").click().run()
    app.button(key="overwrite").click().run()
    assert json.loads(path.read_text()) == {"news": 0.1, "wiki": 0.9}
    assert str(path) in _texts(app.success) and "Overwrite it?" not in _texts(app.warning)


@pytest.mark.parametrize(("ratios", "message"), [
    ({"news": "-5"}, "ratio of 'news' must be a finite number ≥ 0"),
    ({"news": "ten"}, "ratio of 'news' must be a number, got 'ten'"),
    ({"news": "0", "wiki": "0"}, "all ratios are 0"),
])
def test_bad_ratios_show_an_inline_message_and_no_save(app, ratios, message):
    _set_ratios(app, **ratios)
    assert not app.exception
    assert message in _texts(app.error)
    assert not [b for b in app.button if b.key == "save"]


def test_bad_policy_name_is_an_inline_message(app, viewer_env):
    app.text_input(key="policy_name").set_value("../outside").run()
    assert not app.exception and "policy name" in _texts(app.error)
    assert not (viewer_env["SAMPLER_VIEWER_POLICY_DIR"].parent / "outside.json").exists()


def test_empty_missing_and_unusable_directories_are_inline_messages(app, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken" / "only").mkdir(parents=True)
    (tmp_path / "broken" / "only" / "manifest.json").write_text("[]", encoding="utf-8")
    (tmp_path / "a_file.txt").write_text("x", encoding="utf-8")
    for path, message in ((tmp_path / "empty", "no sources found"), (tmp_path / "missing", "no such directory"),
                          (tmp_path / "broken", "not a format_version 1 manifest"), (tmp_path / "a_file.txt", "no such directory")):
        app.text_input(key="data_dir").set_value(str(path)).run()
        assert not app.exception, path
        assert message in _texts(app.error), (path, _texts(app.error))


def test_count_tokens_button_switches_the_plan_to_tokens(app, monkeypatch, tiny_tokenizer_dir, shard_dir):
    app.text_input(key="tokenizer").set_value(str(tiny_tokenizer_dir)).run()
    app.button(key="count_tokens").click().run()
    assert not app.exception and not app.error
    tokens = {name: row["tokens"] for name, row in _table(app, 0).items()}
    cached = {name: json.loads((shard_dir / name / "token_counts.json").read_text())[str(tiny_tokenizer_dir)]["tokens"]
              for name in ("news", "wiki")}
    assert tokens == {name: f"{n:,}" for name, n in cached.items()}
    plan = _table(app, 1)
    assert plan["wiki"]["available (tokens)"] == f"{cached['wiki']:,}"
    assert not [b for b in app.run().button if b.key == "count_tokens"]  # nothing left to count


def test_count_tokens_with_a_bad_tokenizer_is_an_inline_message(app):
    app.button(key="count_tokens").click().run()
    assert not app.exception and "not a tokenizer directory" in _texts(app.error)


def test_pasted_sizes_replace_the_directory(app):
    app.text_area(key="pasted").set_value("{news: 256K, wiki: 768K}").run()
    assert not app.exception and not app.error
    sources = _table(app, 0)
    assert sources["news"]["kind"] == "pasted" and sources["news"]["raw MB"] == "0.250"
    assert float(_ratio(app, "news").value) == pytest.approx(25)
    app.text_area(key="pasted").set_value("{news: lots}").run()
    assert not app.exception and "not a number" in _texts(app.error)
