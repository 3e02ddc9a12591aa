"""Reward-model stage: the pure pieces (score reading and the pairwise loss).

The stage plumbing (config section, model building, data, registration) is added by the reward-model stage
issue. Engine form: the engine sums a micro-batch's loss and divides by an item count over the whole
optimizer step, so a stage returns `reward_loss_sum(...)` = (sum over pairs, number of pairs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def last_token_scores(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B]: values[b, t] at the last t where attention_mask[b, t] == 1.

    Reads the mask, not the token ids, so left padding, right padding and pad == eos all give the score of
    the last real token (the rule OpenRLHF's reward model uses; TRL's `get_reward` instead looks for the
    first pad id, which breaks when pad == eos).
    """
    if values.shape != attention_mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and attention_mask {tuple(attention_mask.shape)} "
                         "must both be [batch, length]")
    mask = attention_mask.long()
    if not mask.any(-1).all():
        raise ValueError("a row of attention_mask has no real token: nothing to score")
    last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)
    return values.gather(1, last[:, None]).squeeze(1)


def pairwise_loss(s_chosen: torch.Tensor, s_rejected: torch.Tensor,
                  margin: torch.Tensor | float | None = None) -> torch.Tensor:
    """[B] Bradley-Terry loss per pair: -log sigmoid(s_chosen - s_rejected - margin).

    `margin` (per pair or one number) is the Llama 2 margin loss, TRL RewardTrainer's optional `margin`
    column; None means 0.
    """
    difference = s_chosen - s_rejected
    if margin is not None:
        difference = difference - margin
    return -F.logsigmoid(difference)


def center_rewards(s_chosen: torch.Tensor, s_rejected: torch.Tensor, coef: float) -> torch.Tensor:
    """[B] coef * (s_chosen + s_rejected)^2 per pair; its mean is TRL's `center_rewards_coefficient` term
    coef * mean((s_c + s_r)^2) (Eisenstein et al. 2023), pushing scores towards zero mean."""
    return coef * (s_chosen + s_rejected) ** 2


def reward_loss_sum(s_chosen: torch.Tensor, s_rejected: torch.Tensor,
                    margin: torch.Tensor | float | None = None,
                    center_coef: float = 0.0) -> tuple[torch.Tensor, int]:
    """(sum over pairs of pairwise loss + centering term, number of pairs): the engine's sum form.

    sum / pairs == mean(pairwise_loss) + coef * mean((s_c + s_r)^2), the batch loss."""
    losses = pairwise_loss(s_chosen, s_rejected, margin)
    if center_coef:
        losses = losses + center_rewards(s_chosen, s_rejected, center_coef)
    return losses.sum(), losses.numel()
