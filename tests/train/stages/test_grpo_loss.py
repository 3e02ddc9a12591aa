"""GRPO: group advantages (zero-variance groups give 0), clipped objective, k3 KL and the three
normalisations against hand values, and the sum form over micro-batches."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from llms_trainer.train.stages.grpo import (
    LOSS_TYPES,
    group_advantages,
    grpo_loss_sum,
    grpo_token_losses,
)


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor | None, ref_logps: torch.Tensor | None,
              advantages: torch.Tensor, completion_mask: torch.Tensor, *, epsilon_low: float = 0.2,
              epsilon_high: float = 0.2, beta: float = 0.0, loss_type: str = "dapo",
              max_completion_length: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The module doc's loss of a whole batch, built from the stage's pieces as its run does: (loss, stats): logps, old_logps, ref_logps and completion_mask are [B, C] over the
    completion tokens, advantages [B]. Stats are means over completion tokens: "kl", "clip_ratio/low_mean",
    "clip_ratio/high_mean", "clip_ratio/region_mean" (TRL's metric names)."""
    parts = grpo_token_losses(logps, old_logps, ref_logps, advantages, epsilon_low=epsilon_low,
                              epsilon_high=epsilon_high, beta=beta)
    loss_sum, items = grpo_loss_sum(parts["loss"], completion_mask, loss_type, max_completion_length)
    mask = completion_mask.bool()
    tokens = max(int(mask.sum()), 1)
    low, high = parts["clipped_low"] & mask, parts["clipped_high"] & mask
    stats = {"kl": float((parts["kl"].detach() * mask).sum()) / tokens,
             "clip_ratio/low_mean": int(low.sum()) / tokens, "clip_ratio/high_mean": int(high.sum()) / tokens,
             "clip_ratio/region_mean": int((low | high).sum()) / tokens}
    return loss_sum / max(items, 1), stats


REWARDS = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])  # two prompts, three completions each; the second flat


def test_group_scaling_hand_values():
    advantages, flat = group_advantages(REWARDS, 3, "group")  # group 1: mean 2, std 1
    torch.testing.assert_close(advantages, torch.tensor([-1, 0, 1, 0, 0, 0]) / (1 + 1e-4))
    assert flat == 1 and advantages[3:].tolist() == [0.0, 0.0, 0.0]


def test_batch_and_no_scaling_hand_values():
    batch_std = statistics.stdev(REWARDS.tolist())
    advantages, flat = group_advantages(REWARDS, 3, "batch")
    torch.testing.assert_close(advantages, torch.tensor([-1, 0, 1, 0, 0, 0]) / (batch_std + 1e-4))
    advantages, flat = group_advantages(REWARDS, 3, "none")
    assert advantages.tolist() == [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0] and flat == 1


def test_equal_rewards_whose_float_mean_is_inexact_still_give_exact_zeros():
    advantages, flat = group_advantages(torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 0.0, 1.0, 0.0]), 3)
    assert advantages[:6].tolist() == [0.0] * 6 and flat == 2 and advantages[7] > 0


def test_group_arguments_are_checked():
    with pytest.raises(ValueError, match="num_generations"):
        group_advantages(REWARDS, 4)
    with pytest.raises(ValueError, match="num_generations"):
        group_advantages(REWARDS, 1)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(REWARDS, 3, "rank")


MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])  # 3 and 1 completion tokens; 4 tokens in all
ADVANTAGES = torch.tensor([1.0, -2.0])


@pytest.mark.parametrize("loss_type, expected", [
    ("grpo", (-1 + 2) / 2),             # per-sequence token means -1 and 2, then their mean
    ("dapo", (-1 * 3 + 2 * 1) / 4),     # all tokens weigh the same
    ("dr_grpo", (-1 * 3 + 2 * 1) / (2 * 4)),  # sum / (sequences * max_completion_length 4)
])
def test_first_pass_loss_is_minus_the_advantage_weighted_mean(loss_type, expected):
    logps = torch.randn(2, 4).requires_grad_()  # ratio exp(logp - old) == 1 on the first pass
    loss, stats = grpo_loss(logps, None, None, ADVANTAGES, MASK, loss_type=loss_type, max_completion_length=4)
    assert loss.item() == pytest.approx(expected)
    assert stats == {"kl": 0.0, "clip_ratio/low_mean": 0.0, "clip_ratio/high_mean": 0.0,
                     "clip_ratio/region_mean": 0.0}
    if loss_type == "dapo":  # d/dlogp of -r A at r = 1 is -A, averaged over the 4 tokens
        loss.backward()
        torch.testing.assert_close(logps.grad, -ADVANTAGES[:, None] * MASK / 4)


def test_clipping_hand_values():
    old = torch.zeros(2, 3)
    ratios = torch.tensor([[1.5, 1.25, 0.5], [1.5, 0.5, 1.1]])
    advantages = torch.tensor([2.0, -1.0])
    parts = grpo_token_losses(torch.log(ratios), old, None, advantages, epsilon_low=0.2, epsilon_high=0.28)
    # A > 0: ratio clipped above at 1.28 (1.25 is inside); below 1 - 0.2 the unclipped term is the minimum
    # A < 0: ratio clipped below at 0.8; above 1 + 0.28 the unclipped term is the minimum
    expected = [[-1.28 * 2, -1.25 * 2, -0.5 * 2], [1.5, 0.8, 1.1]]
    torch.testing.assert_close(parts["loss"], torch.tensor(expected))
    assert parts["clipped_high"].tolist() == [[True, False, False], [False, False, False]]
    assert parts["clipped_low"].tolist() == [[False, False, False], [False, True, False]]
    _, stats = grpo_loss(torch.log(ratios), old, None, advantages, torch.tensor([[1, 1, 1], [1, 1, 0]]),
                         epsilon_low=0.2, epsilon_high=0.28)
    assert stats["clip_ratio/high_mean"] == pytest.approx(1 / 5)
    assert stats["clip_ratio/low_mean"] == pytest.approx(1 / 5)
    assert stats["clip_ratio/region_mean"] == pytest.approx(2 / 5)


def test_k3_kl_hand_values_and_zero_when_reference_is_the_policy():
    logps = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    loss, stats = grpo_loss(logps, None, logps.clone(), ADVANTAGES, MASK[:, :2], beta=0.1, loss_type="dapo")
    plain, _ = grpo_loss(logps, None, None, ADVANTAGES, MASK[:, :2], loss_type="dapo")
    assert stats["kl"] == 0.0 and loss.item() == pytest.approx(plain.item())
    ref = logps + math.log(2)  # ref - logp = ln 2: kl = 2 - ln 2 - 1
    kl = 2 - math.log(2) - 1
    parts = grpo_token_losses(logps, None, ref, ADVANTAGES, beta=0.1)
    torch.testing.assert_close(parts["kl"], torch.full((2, 2), kl))
    torch.testing.assert_close(parts["loss"], -ADVANTAGES[:, None].expand(2, 2) + 0.1 * kl)
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_token_losses(logps, None, None, ADVANTAGES, beta=0.1)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_sum_form_split_into_micro_batches_gives_the_batch_loss(loss_type):
    gen = torch.Generator().manual_seed(0)
    logps, old, ref = (torch.randn(5, 6, generator=gen) * 0.3 - 2 for _ in range(3))
    advantages = torch.randn(5, generator=gen)
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in (6, 2, 4, 1, 5)])
    options = dict(epsilon_low=0.2, epsilon_high=0.28, beta=0.05)
    whole, _ = grpo_loss(logps, old, ref, advantages, mask, loss_type=loss_type, max_completion_length=8,
                         **options)
    sums, items = 0.0, 0
    for part in (slice(0, 2), slice(2, 5)):
        parts = grpo_token_losses(logps[part], old[part], ref[part], advantages[part], **options)
        loss_sum, count = grpo_loss_sum(parts["loss"], mask[part], loss_type, max_completion_length=8)
        sums, items = sums + loss_sum, items + count
    assert items == (18 if loss_type == "dapo" else 5)
    torch.testing.assert_close(sums / items, whole)


def test_dr_grpo_needs_the_configured_maximum():
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(torch.zeros(2, 4), None, None, ADVANTAGES, MASK, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(torch.zeros(2, 4), None, None, ADVANTAGES, MASK, loss_type="ppo")
