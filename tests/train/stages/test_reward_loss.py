"""Reward model pieces: score of the last real token under any padding, pairwise loss vs hand values."""

from __future__ import annotations

import math

import pytest
import torch

from llms_trainer.ops.scores import last_token_scores
from llms_trainer.train.stages.reward import center_rewards, pairwise_loss, reward_loss_sum

VALUES = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]])


def test_last_token_score_under_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert last_token_scores(VALUES, right).tolist() == [3.0, 8.0, 9.0]
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_scores(VALUES, left).tolist() == [4.0, 8.0, 12.0]


def test_last_token_score_when_pad_equals_eos():
    eos = 2  # the real sequence ends with eos and is padded with eos: only the mask tells them apart
    ids = torch.tensor([[1, 7, eos, eos, eos], [eos, eos, 1, 8, eos]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    values = torch.arange(10, dtype=torch.float32).view(2, 5)
    assert ids[torch.arange(2), [2, 4]].tolist() == [eos, eos]
    assert last_token_scores(values, mask).tolist() == [2.0, 9.0]


def test_last_token_score_rejects_an_empty_row():
    with pytest.raises(ValueError, match="no real token"):
        last_token_scores(VALUES[:1], torch.zeros(1, 4))


def test_pairwise_loss_hand_values():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    expected = [math.log1p(math.exp(-1)), math.log(2), math.log1p(math.exp(2))]
    torch.testing.assert_close(pairwise_loss(chosen, rejected), torch.tensor(expected))
    # margin 1 on the first pair turns its difference 1 into 0: loss ln 2; a per-pair margin tensor works too
    torch.testing.assert_close(pairwise_loss(chosen[:1], rejected[:1], 1.0), torch.tensor([math.log(2)]))
    with_margin = pairwise_loss(chosen, rejected, torch.tensor([1.0, -1.0, 0.0]))
    expected_with_margin = [math.log(2), math.log1p(math.exp(-1)), expected[2]]
    torch.testing.assert_close(with_margin, torch.tensor(expected_with_margin))


def test_center_rewards_hand_values():
    assert center_rewards(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0]), 0.01).tolist() == \
        pytest.approx([0.09, 0.0])


def test_sum_form_split_into_micro_batches_gives_the_batch_mean():
    gen = torch.Generator().manual_seed(0)
    chosen, rejected, margin = torch.randn(5, generator=gen), torch.randn(5, generator=gen), torch.rand(5)
    batch = pairwise_loss(chosen, rejected, margin).mean() + 0.05 * ((chosen + rejected) ** 2).mean()
    first = reward_loss_sum(chosen[:2], rejected[:2], margin[:2], center_coef=0.05)
    second = reward_loss_sum(chosen[2:], rejected[2:], margin[2:], center_coef=0.05)
    assert (first[1], second[1]) == (2, 3)
    torch.testing.assert_close((first[0] + second[0]) / (first[1] + second[1]), batch)
