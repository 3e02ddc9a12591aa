"""DPO loss: ln 2 when policy == reference, each loss type against hand values, sum form."""

from __future__ import annotations

import math

import pytest
import torch

from llms_trainer.train.stages.dpo import LOSS_TYPES, dpo_loss

# policy log-probs chosen -1, rejected -3; reference -2 and -2: h = (-1 + 3) - 0 = 2
PAIR = [torch.tensor([-1.0], dtype=torch.float64), torch.tensor([-3.0], dtype=torch.float64),
        torch.tensor([-2.0], dtype=torch.float64), torch.tensor([-2.0], dtype=torch.float64)]


def dpo_loss_sum(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                 ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *, beta: float = 0.1,
                 loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> tuple[torch.Tensor, int]:
    """(sum of the per-pair losses, number of pairs): the engine's sum form of `dpo_loss`."""
    losses, _, _ = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                            beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
    return losses.sum(), losses.numel()


def softplus(x: float) -> float:  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_policy_equal_to_reference_gives_ln2_and_zero_rewards(label_smoothing):
    logps = torch.tensor([-4.0, -7.5, -0.25], dtype=torch.float64)
    other = torch.tensor([-3.0, -9.0, -1.0], dtype=torch.float64)
    losses, chosen, rejected = dpo_loss(logps, other, logps, other, beta=0.3, label_smoothing=label_smoothing)
    assert losses.tolist() == [math.log(2)] * 3
    assert chosen.tolist() == [0.0] * 3 and rejected.tolist() == [0.0] * 3


@pytest.mark.parametrize("loss_type, beta, smoothing, expected", [
    ("sigmoid", 0.5, 0.0, softplus(-1)),                                  # -log σ(β h), β h = 1
    ("sigmoid", 0.5, 0.1, 0.9 * softplus(-1) + 0.1 * softplus(1)),        # cDPO
    ("robust", 0.5, 0.1, (0.9 * softplus(-1) - 0.1 * softplus(1)) / 0.8),
    ("robust", 0.5, 0.0, softplus(-1)),                                   # no flips: plain DPO
    ("ipo", 0.5, 0.0, (2 - 1) ** 2),                                      # (h - 1/(2β))^2
    ("ipo", 0.25, 0.0, (2 - 2) ** 2),
    ("hinge", 0.25, 0.0, 0.5),                                            # max(0, 1 - β h)
    ("hinge", 1.0, 0.0, 0.0),
])
def test_loss_types_hand_values(loss_type, beta, smoothing, expected):
    losses, chosen, rejected = dpo_loss(*PAIR, beta=beta, loss_type=loss_type, label_smoothing=smoothing)
    assert losses.item() == pytest.approx(expected, abs=1e-12)
    assert chosen.item() == pytest.approx(beta * 1.0) and rejected.item() == pytest.approx(beta * -1.0)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_raising_the_chosen_log_prob_lowers_the_loss(loss_type):
    chosen = torch.tensor([-2.0], requires_grad=True)
    losses, rewards, _ = dpo_loss(chosen, torch.tensor([-2.0]), torch.tensor([-2.0]), torch.tensor([-2.0]),
                                  beta=0.1, loss_type=loss_type)
    losses.sum().backward()
    assert chosen.grad.item() < 0 and not rewards.requires_grad


def test_sum_form_split_into_micro_batches_gives_the_batch_mean():
    gen = torch.Generator().manual_seed(0)
    logps = [torch.randn(6, generator=gen) * 3 for _ in range(4)]
    for loss_type in LOSS_TYPES:
        batch = dpo_loss(*logps, beta=0.2, loss_type=loss_type)[0].mean()
        first = dpo_loss_sum(*[x[:4] for x in logps], beta=0.2, loss_type=loss_type)
        second = dpo_loss_sum(*[x[4:] for x in logps], beta=0.2, loss_type=loss_type)
        torch.testing.assert_close((first[0] + second[0]) / (first[1] + second[1]), batch)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(*PAIR, loss_type="kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*PAIR, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing applies"):
        dpo_loss(*PAIR, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(*PAIR, beta=0.0)
