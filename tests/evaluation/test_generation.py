"""Generation: greedy == HF generate, left padding invisible, stopping, reproducible sampling, eval outputs."""

from __future__ import annotations

import json

import pytest
import torch

from llms_trainer.data.packing import pad_id
from llms_trainer.evaluation import EvalDataError, encode_with_bos
from llms_trainer.evaluation.generation import evaluate_generation, load_generation_prompts
from llms_trainer.ops.generate import generate, top_p_filter
from llms_trainer.ops.ranks import merge_results, rank_share
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


@pytest.fixture
def sharp_model(tiny_tokenizer):
    """The tiny Llama with larger initial weights (initializer_range 0.2): attention is peaked enough that a
    wrong decoding position or a visible pad token changes greedy outputs (with 0.02 it does not)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tiny_tokenizer), initializer_range=0.2,
                         bos_token_id=tiny_tokenizer.bos_token_id, eos_token_id=tiny_tokenizer.eos_token_id)
    return LlamaForCausalLM(config).float().train()


def ids_of(tokenizer, prompts):
    return [encode_with_bos(tokenizer, p) for p in prompts]


def test_batched_left_padded_greedy_equals_each_prompt_alone(sharp_model, tiny_tokenizer):
    prompts = ids_of(tiny_tokenizer, PROMPTS)
    assert len({len(p) for p in prompts}) > 2  # mixed lengths: the batch is left-padded
    batched = generate(sharp_model, tiny_tokenizer, prompts, max_new_tokens=8, stop_token_ids=(),
                       batch_size=5)
    for i, prompt in enumerate(prompts):
        alone = generate(sharp_model, tiny_tokenizer, [prompt], max_new_tokens=8, stop_token_ids=())
        assert alone.completions() == [batched.completions()[i]]
    assert batched.completion_ids.shape == (5, 8) and batched.truncated.all()
    assert len({tuple(c) for c in batched.completions()}) > 1  # different prompts, different continuations
    assert sharp_model.training  # mode restored


def test_greedy_equals_hf_generate(sharp_model, tiny_tokenizer):
    prompt = ids_of(tiny_tokenizer, ["Optimizer updates weights"])[0]
    ours = generate(sharp_model, tiny_tokenizer, [prompt], max_new_tokens=12)
    sharp_model.eval()
    hf = sharp_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)).long(),
                              do_sample=False, max_new_tokens=12, pad_token_id=pad_id(tiny_tokenizer))
    assert ours.completions() == [hf[0, len(prompt):].tolist()]


def test_each_row_stops_at_its_first_stop_id_and_is_masked_after(sharp_model, tiny_tokenizer):
    prompts = ids_of(tiny_tokenizer, PROMPTS)
    free = generate(sharp_model, tiny_tokenizer, prompts, max_new_tokens=10, stop_token_ids=()).completions()
    stops = {free[0][2], free[3][3]}  # two stop ids: rows 0 and 3 end at different steps, others run on
    out = generate(sharp_model, tiny_tokenizer, prompts, max_new_tokens=10, stop_token_ids=stops,
                   batch_size=5)
    fill = pad_id(tiny_tokenizer)
    for i, row in enumerate(free):
        cut = next((t + 1 for t, token in enumerate(row) if token in stops), len(row))
        assert out.completions()[i] == row[:cut]
        assert out.completion_mask[i].tolist() == [1] * cut + [0] * (out.completion_mask.shape[1] - cut)
        assert set(out.completion_ids[i, cut:].tolist()) <= {fill}
        assert bool(out.truncated[i]) == (cut == len(row) and row[-1] not in stops)
        assert out.texts[i] == tiny_tokenizer.decode(row[:cut], skip_special_tokens=True)
    lengths = out.completion_mask.sum(-1).tolist()
    assert lengths[0] <= 3 and lengths[3] <= 4 and max(lengths) == 10


def sample(model, tokenizer, generator, **options):
    prompts = ids_of(tokenizer, PROMPTS)
    return generate(model, tokenizer, prompts, max_new_tokens=8, do_sample=True, stop_token_ids=(),
                    batch_size=3, generator=generator, **options).completions()


def test_sampling_is_reproducible_from_the_generator_alone(sharp_model, tiny_tokenizer):
    global_rng = torch.random.get_rng_state()
    first = sample(sharp_model, tiny_tokenizer, torch.Generator().manual_seed(3))
    assert sample(sharp_model, tiny_tokenizer, torch.Generator().manual_seed(3)) == first
    assert sample(sharp_model, tiny_tokenizer, torch.Generator().manual_seed(4)) != first
    assert torch.equal(torch.random.get_rng_state(), global_rng)  # the global RNG is not touched
    generator = torch.Generator().manual_seed(3)
    sample(sharp_model, tiny_tokenizer, generator)
    saved = generator.get_state()  # as a checkpoint would keep it
    second = sample(sharp_model, tiny_tokenizer, generator)
    assert second != first
    generator.set_state(saved)
    assert sample(sharp_model, tiny_tokenizer, generator) == second  # resumed rollout is exact


def test_sampling_limits_equal_greedy(sharp_model, tiny_tokenizer):
    prompts = ids_of(tiny_tokenizer, PROMPTS)
    greedy = generate(sharp_model, tiny_tokenizer, prompts, max_new_tokens=8, stop_token_ids=()).completions()
    assert sample(sharp_model, tiny_tokenizer, torch.Generator().manual_seed(0)) != greedy
    assert sample(sharp_model, tiny_tokenizer, torch.Generator().manual_seed(0), temperature=1e-4) == greedy
    assert sample(sharp_model, tiny_tokenizer, torch.Generator().manual_seed(0), top_p=1e-6) == greedy


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    probs = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    assert top_p_filter(probs, 0.6).tolist() == [[0.0, 0.5, 0.3]]  # 0.5 < 0.6: the 0.3 token is needed too
    assert top_p_filter(probs, 0.45).tolist() == [[0.0, 0.5, 0.0]]
    assert top_p_filter(probs, 1e-9).tolist() == [[0.0, 0.5, 0.0]]  # the most likely token always stays
    assert top_p_filter(probs, 1.0).tolist() == probs.tolist()


def test_bad_generation_arguments_are_named(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="prompt 1 has no tokens"):
        generate(tiny_model, tiny_tokenizer, [[1, 5], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="temperature > 0"):
        generate(tiny_model, tiny_tokenizer, [[1, 5]], max_new_tokens=2, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(tiny_model, tiny_tokenizer, [[1, 5]], max_new_tokens=0)


@pytest.mark.parametrize("world", [2, 3])
def test_two_simulated_ranks_give_the_single_rank_results(tiny_model, tiny_tokenizer, world):
    def texts(prompts):
        return generate(tiny_model, tiny_tokenizer, ids_of(tiny_tokenizer, prompts), max_new_tokens=5).texts

    single = texts(PROMPTS)
    gathered = []  # what gather_object returns: every rank's tagged results, in rank order
    for rank in range(world):
        share = rank_share(PROMPTS, rank, world)
        outputs = texts([p for _, p in share])
        gathered += [(index, out) for (index, _), out in zip(share, outputs, strict=True)]
    assert merge_results(gathered) == single


@pytest.mark.parametrize("n, world", [(1, 1), (5, 2), (4, 2), (7, 3), (2, 4)])
def test_rank_share_splits_items_once_with_equal_work_per_rank(n, world):
    items = [f"item{i}" for i in range(n)]
    shares = [rank_share(items, rank, world) for rank in range(world)]
    assert len({len(share) for share in shares}) == 1  # same number of forward passes on every rank
    assert [item for _, item in shares[0] if _ is not None] == items[0::world]
    assert merge_results([tagged for share in shares for tagged in share]) == items


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
