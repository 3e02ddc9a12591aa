"""Held-out NLL: equals hand-computed cross-entropy; windows cover every target exactly once."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llms_trainer.evaluation import EvalDataError
from llms_trainer.evaluation.nll import encode_document, evaluate_nll, load_nll_texts, nll_windows
from tests.helpers import write_jsonl

TEXTS = ["The model reads data from many sources and learns.", "模型读取数据", "the"]


def hand_nll(model, ids: list[int], seq_length: int) -> tuple[float, int]:
    """Summed cross-entropy of ids[1:] computed window by window with plain single-row forwards."""
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, seq_length):
        chunk = torch.tensor([ids[start:start + seq_length + 1]])
        logits = model(input_ids=chunk[:, :-1]).logits[0]
        total += F.cross_entropy(logits, chunk[0, 1:], reduction="sum").item()
        count += chunk.shape[1] - 1
    return total, count


@pytest.mark.parametrize("seq_length", [512, 5])
def test_nll_equals_hand_computed_cross_entropy(tiny_model, tiny_tokenizer, accelerator, seq_length):
    metrics = evaluate_nll(tiny_model, tiny_tokenizer, TEXTS, accelerator, seq_length=seq_length, batch_size=3)
    tiny_model.eval()
    with torch.no_grad():
        sums = [hand_nll(tiny_model, encode_document(tiny_tokenizer, t), seq_length) for t in TEXTS]
    expected = sum(s for s, _ in sums) / sum(c for _, c in sums)
    assert metrics["eval/nll/loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["eval/nll/ppl"] == pytest.approx(math.exp(expected), rel=1e-5)
    chars = sum(len(t) for t in TEXTS)
    assert metrics["eval/nll/nats_per_char"] == pytest.approx(sum(s for s, _ in sums) / chars, rel=1e-5)


def test_targets_exclude_bos_and_include_eos(tiny_tokenizer):
    ids = encode_document(tiny_tokenizer, "the model")
    assert ids[0] == tiny_tokenizer.bos_token_id and ids[-1] == tiny_tokenizer.eos_token_id
    ((inputs, targets),) = nll_windows(ids, seq_length=64)
    assert inputs == ids[:-1] and targets == ids[1:]


@pytest.mark.parametrize("n", [2, 3, 9, 10, 11, 31])
@pytest.mark.parametrize("seq_length", [1, 3, 5, 10])
def test_windows_cover_every_target_once(n, seq_length):
    ids = list(range(100, 100 + n))
    windows = nll_windows(ids, seq_length)
    assert [t for _, t in windows] and sum((t for _, t in windows), []) == ids[1:]
    for inputs, targets in windows:
        assert 1 <= len(inputs) <= seq_length and len(targets) == len(inputs)
        assert [i + 1 for i in inputs] == targets  # each target is the token right after its input


def test_single_token_text_has_no_targets():
    assert nll_windows([1], seq_length=4) == []


def test_eval_mode_and_no_gradients(tiny_model, tiny_tokenizer, accelerator):
    tiny_model.train()
    evaluate_nll(tiny_model, tiny_tokenizer, TEXTS, accelerator, seq_length=16)
    assert tiny_model.training and all(m.training for m in tiny_model.modules())
    assert all(p.grad is None for p in tiny_model.parameters())
    tiny_model.eval()
    evaluate_nll(tiny_model, tiny_tokenizer, TEXTS, accelerator, seq_length=16)
    assert not tiny_model.training


def test_load_texts_accepts_text_or_content(tmp_path):
    path = write_jsonl(tmp_path / "nll.jsonl", [{"text": "a b"}, {"content": "c d"}])
    assert load_nll_texts(path) == ["a b", "c d"]
    with pytest.raises(EvalDataError, match=r"nll\.jsonl:3: needs .*'text'"):
        load_nll_texts(write_jsonl(path, [{"text": "a"}, {"text": "b"}, {"title": "no text"}]))
