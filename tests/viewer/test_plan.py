"""Ratios → plan (shares, sampled amounts, epochs) and the policy file the trainer reads."""

from __future__ import annotations

import math

import pytest

from llms_trainer.data.mixing import load_policy
from llms_trainer.sampler_viewer.plan import (
    PolicyExistsError,
    default_percents,
    make_plan,
    parse_percents,
    plan_unit,
    policy_from_percents,
    policy_path,
    save_policy,
)
from llms_trainer.sampler_viewer.sources import RAW_BYTES, TOKENS, Source, ViewerError


def _sources(tokens: tuple[int | None, ...] = (None, None, None)) -> list[Source]:
    return [Source("a", "shards", 1000, 400, 10, 0, tokens[0]), Source("b", "shards", 3000, 900, 30, 0, tokens[1]),
            Source("c", "shards", 6000, 2000, 60, 0, tokens[2])]


def test_unit_is_tokens_only_when_every_source_is_counted():
    assert plan_unit(_sources()) == RAW_BYTES
    assert plan_unit(_sources((100, None, 300))) == RAW_BYTES
    assert plan_unit(_sources((100, 200, 300))) == TOKENS


def test_default_ratios_are_the_original_distribution_summing_to_100():
    assert default_percents(_sources()) == {"a": 10.0, "b": 30.0, "c": 60.0}
    by_tokens = default_percents(_sources((100, 100, 100)))
    assert sum(by_tokens.values()) == pytest.approx(100.0, abs=1e-9)
    assert sorted(by_tokens.values()) == pytest.approx([33.33, 33.33, 33.34])


def test_plan_shares_sampled_amounts_and_epochs_in_tokens():
    plan = make_plan(_sources((100, 200, 400)), {"a": 40, "b": 40, "c": 0}, total_planned=1000)
    assert plan.unit == TOKENS
    assert plan.remainder_percent == pytest.approx(20)
    assert plan.left_out == ["c"]
    rows = {r.name: r for r in plan.rows}
    assert rows["a"].share == pytest.approx(0.5) and rows["a"].sampled == pytest.approx(500)
    assert rows["a"].epochs == pytest.approx(5.0)  # 500 sampled of 100 available
    assert rows["b"].epochs == pytest.approx(2.5)
    assert rows["c"].sampled == 0 and rows["c"].epochs == 0
    assert rows["c"].original_share == pytest.approx(400 / 700)


def test_plan_falls_back_to_raw_bytes_and_marks_empty_sources():
    sources = _sources() + [Source("empty", "shards", 0, 0, 0)]
    plan = make_plan(sources, {"a": 25, "b": 25, "c": 25, "empty": 25}, total_planned=10_000)
    assert plan.unit == RAW_BYTES and plan.remainder_percent == pytest.approx(0)
    rows = {r.name: r for r in plan.rows}
    assert rows["c"].epochs == pytest.approx(2500 / 6000)
    assert math.isinf(rows["empty"].epochs)
    with pytest.raises(ViewerError, match="must be > 0"):
        make_plan(sources, {"a": 1, "b": 1, "c": 1, "empty": 1}, total_planned=0)


def test_parse_percents_accepts_numbers_and_percent_signs():
    assert parse_percents({"a": "12.5", "b": " 7% ", "c": ""}) == {"a": 12.5, "b": 7.0, "c": 0.0}


@pytest.mark.parametrize(("texts", "message"), [
    ({"a": "-5", "b": "10"}, "ratio of 'a' must be a finite number ≥ 0"),
    ({"a": "abc", "b": "10"}, "ratio of 'a' must be a number"),
    ({"a": "nan", "b": "10"}, "ratio of 'a' must be a finite number"),
    ({"a": "0", "b": "0"}, "all ratios are 0"),
])
def test_bad_ratios_are_viewer_errors(texts, message):
    with pytest.raises(ViewerError, match=message):
        parse_percents(texts)


def test_both_bad_ratios_are_named_in_one_message():
    with pytest.raises(ViewerError, match="'a'.*'b'"):
        parse_percents({"a": "x", "b": "-1", "c": "3"})


def test_saved_policy_is_what_the_trainer_loads(tmp_path):
    policy = policy_from_percents({"a": 30, "b": 50, "c": 0})
    assert policy == {"a": 0.375, "b": 0.625}  # zero left out, shares normalised
    root = tmp_path / "configs" / "sample_policy"
    path = save_policy(policy, policy_path(root, "mix"), policy_root=root)
    assert path == tmp_path / "configs" / "sample_policy" / "mix.json"
    assert load_policy(path, ["a", "b"]) == pytest.approx({"a": 0.375, "b": 0.625})
    assert [p.name for p in path.parent.iterdir()] == ["mix.json"]  # no temp files left behind


def test_saving_over_an_existing_policy_needs_overwrite(tmp_path):
    path = save_policy({"a": 1.0}, tmp_path / "p.json", policy_root=tmp_path)
    with pytest.raises(PolicyExistsError):
        save_policy({"b": 1.0}, path, policy_root=tmp_path)
    assert load_policy(path, ["a"]) == {"a": 1.0}
    save_policy({"b": 1.0}, path, policy_root=tmp_path, overwrite=True)
    assert load_policy(path, ["b"]) == {"b": 1.0}


def test_policy_names_stay_inside_the_policy_dir(tmp_path):
    assert policy_path(tmp_path, "team/mix_v2.json") == tmp_path / "team" / "mix_v2.json"
    for bad in ("../escape", "/abs", "", "a b", "x/../../y"):
        with pytest.raises(ViewerError, match="policy name"):
            policy_path(tmp_path, bad)


def test_all_zero_policy_is_refused():
    with pytest.raises(ViewerError, match="all ratios are 0"):
        policy_from_percents({"a": 0, "b": 0})
