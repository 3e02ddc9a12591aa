"""Log-probs of labelled tokens: equal to the naive full log-softmax, unchanged by left padding."""

from __future__ import annotations

import pytest
import torch

from llms_trainer.ops.logprobs import token_logprobs
from llms_trainer.ops.padding import left_padded

VOCAB = 97


def sequence_logprob_sum(model, input_ids, attention_mask, labels_mask) -> torch.Tensor:
    """[B] the summed log-probs of each row's labelled tokens (DPO's sequence log-prob)."""
    return token_logprobs(model, input_ids, attention_mask, labels_mask).sum(-1)


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, initializer_range=0.2)
    return LlamaForCausalLM(config).float().eval()


def rows_and_labels() -> tuple[list[list[int]], list[int]]:
    """Token rows of different lengths and how many of each row's last tokens are labelled."""
    gen = torch.Generator().manual_seed(1)
    lengths, labelled = [9, 4, 12], [5, 2, 3]
    return [[1] + torch.randint(3, VOCAB, (n - 1,), generator=gen).tolist() for n in lengths], labelled


def left_padded_batch():
    rows, labelled = rows_and_labels()
    batch = left_padded(rows, 0, "cpu")
    labels_mask = torch.zeros_like(batch["attention_mask"])
    for i, n in enumerate(labelled):
        labels_mask[i, -n:] = 1
    return rows, labelled, batch, labels_mask


def naive(model, batch, labels_mask, temperature):
    """Full-width log-softmax of every position, then the labelled targets."""
    with torch.no_grad():
        logits = model(**batch).logits.float() / temperature
    logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return torch.cat([torch.zeros_like(logps[:, :1]), logps], 1) * labels_mask


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_equals_the_naive_computation(model, temperature):
    _, _, batch, labels_mask = left_padded_batch()
    got = token_logprobs(model, batch["input_ids"], batch["attention_mask"], labels_mask,
                         temperature=temperature)
    expected = naive(model, batch, labels_mask, temperature)
    assert got.dtype == torch.float32 and got.shape == batch["input_ids"].shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got[labels_mask == 0] == 0).all() and (got[labels_mask == 1] < 0).all()


def test_left_padded_batch_equals_unpadded_rows(model):
    rows, labelled, batch, labels_mask = left_padded_batch()
    padded = token_logprobs(model, batch["input_ids"], batch["attention_mask"], labels_mask)
    sums = sequence_logprob_sum(model, batch["input_ids"], batch["attention_mask"], labels_mask)
    for i, (row, n) in enumerate(zip(rows, labelled, strict=True)):
        ids = torch.tensor([row])
        mask = torch.zeros_like(ids)
        mask[0, -n:] = 1
        alone = token_logprobs(model, ids, torch.ones_like(ids), mask)
        torch.testing.assert_close(padded[i, -len(row):], alone[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(sums[i], alone[0].sum(), atol=1e-5, rtol=0)


def test_gradients_reach_the_model(model):
    _, _, batch, labels_mask = left_padded_batch()
    model.zero_grad()
    sequence_logprob_sum(model, batch["input_ids"], batch["attention_mask"], labels_mask).sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_first_column_cannot_be_labelled(model):
    ids = torch.tensor([[1, 5, 6]])
    with pytest.raises(ValueError, match="first token"):
        token_logprobs(model, ids, torch.ones_like(ids), torch.ones_like(ids))
    nothing = token_logprobs(model, ids, torch.ones_like(ids), torch.zeros_like(ids))
    assert nothing.tolist() == [[0.0, 0.0, 0.0]]
