"""Greedy generation: saved outputs, determinism, batch/rank splitting that does not change results."""

from __future__ import annotations

import json

import pytest

from llms_trainer.evaluation import EvalDataError, encode_with_bos, merge_results, rank_share
from llms_trainer.evaluation.generation import (
    evaluate_generation,
    generate_greedy,
    load_generation_prompts,
    new_token_count,
)
from tests.helpers import write_jsonl

PROMPTS = ["The model reads", "data", "Optimizer updates weights step by step on a small machine", "模型读取", "the"]


def test_writes_one_output_per_prompt_in_order(tiny_model, tiny_tokenizer, accelerator, tmp_path):
    metrics = evaluate_generation(tiny_model, tiny_tokenizer, PROMPTS, accelerator, max_new_tokens=6,
                                  save_dir=tmp_path / "gen", step=7, batch_size=2)
    rows = json.loads((tmp_path / "gen" / "step_7.json").read_text(encoding="utf-8"))
    assert [row["prompt"] for row in rows] == PROMPTS
    assert all(isinstance(row["output"], str) for row in rows)
    assert 1 <= metrics["eval/generation/avg_new_tokens"] <= 6
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["step_7.json"]  # no temp files left
    assert tiny_model.training


def test_greedy_is_deterministic_and_independent_of_batching(tiny_model, tiny_tokenizer):
    tiny_model.eval()
    once = generate_greedy(tiny_model, tiny_tokenizer, PROMPTS, "cpu", max_new_tokens=8, batch_size=5)
    again = generate_greedy(tiny_model, tiny_tokenizer, PROMPTS, "cpu", max_new_tokens=8, batch_size=5)
    alone = generate_greedy(tiny_model, tiny_tokenizer, PROMPTS, "cpu", max_new_tokens=8, batch_size=1)
    assert once == again == alone
    assert len({text for text, _ in once}) > 1  # different prompts, different continuations


@pytest.mark.parametrize("world", [2, 3])
def test_two_simulated_ranks_give_the_single_rank_results(tiny_model, tiny_tokenizer, world):
    tiny_model.eval()
    single = generate_greedy(tiny_model, tiny_tokenizer, PROMPTS, "cpu", max_new_tokens=5)
    gathered = []  # what gather_object returns: every rank's tagged results, in rank order
    for rank in range(world):
        share = rank_share(PROMPTS, rank, world)
        outputs = generate_greedy(tiny_model, tiny_tokenizer, [p for _, p in share], "cpu", max_new_tokens=5)
        gathered += [(index, out) for (index, _), out in zip(share, outputs, strict=True)]
    assert merge_results(gathered) == single


@pytest.mark.parametrize("n, world", [(1, 1), (5, 2), (4, 2), (7, 3), (2, 4)])
def test_rank_share_splits_items_once_with_equal_work_per_rank(n, world):
    items = [f"item{i}" for i in range(n)]
    shares = [rank_share(items, rank, world) for rank in range(world)]
    assert len({len(share) for share in shares}) == 1  # same number of forward passes on every rank
    assert [item for _, item in shares[0] if _ is not None] == items[0::world]
    assert merge_results([tagged for share in shares for tagged in share]) == items


def test_new_tokens_are_counted_up_to_the_first_stop():
    assert new_token_count([5, 6, 2, 2, 2], {2}) == 3
    assert new_token_count([5, 6, 7], {2}) == 3
    assert new_token_count([9, 5], {9, 2}) == 1


def test_load_prompts_and_errors(tmp_path):
    path = write_jsonl(tmp_path / "generation.jsonl", [{"content": "Once upon"}, {"content": "中文"}])
    assert load_generation_prompts(path) == ["Once upon", "中文"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"content": "ok"}, {"text": "wrong field"}])
    with pytest.raises(EvalDataError, match=r"bad\.jsonl:2: 'content'"):
        load_generation_prompts(bad)


def test_prompt_gets_exactly_one_bos(tiny_tokenizer):
    plain = encode_with_bos(tiny_tokenizer, "the model")
    assert plain[0] == tiny_tokenizer.bos_token_id and plain.count(tiny_tokenizer.bos_token_id) == 1
    rendered = encode_with_bos(tiny_tokenizer, tiny_tokenizer.bos_token + "the model")  # chat-template style
    assert rendered.count(tiny_tokenizer.bos_token_id) == 1
