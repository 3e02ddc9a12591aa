"""GRPO stage: the pure pieces (group advantages and the clipped policy loss).

The stage plumbing (config section, rollouts with `llms_trainer.evaluation.generation.generate`, reward
model, reference model, data, registration) is added by the GRPO stage issue.

Per completion token t of sequence i, with A_i the sequence's advantage (TRL GRPOTrainer's objective;
`epsilon_high` > `epsilon_low` is DAPO's clip-higher, TRL's `epsilon` / `epsilon_high`):

    r    = exp(logp - old_logp)                    importance ratio (1 on the first pass over a rollout)
    L_it = -min(r A_i, clamp(r, 1 - epsilon_low, 1 + epsilon_high) A_i) + beta * KL_it
    KL   = exp(ref - logp) - (ref - logp) - 1       the k3 estimator of KL(policy || reference), beta > 0

Normalisations (`loss_type`, TRL's names), with m the completion mask, B sequences, and their engine form
(the engine sums `loss_sum` over the micro-batches and ranks of an optimizer step and divides by the summed
`items`, so the whole step gets the whole-batch value):

    grpo     mean_i (sum_t m L / sum_t m)         loss_sum = sum_i of per-sequence means, items = sequences
    dr_grpo  sum m L / (B * max_completion_len)   loss_sum = sum m L / max_completion_len, items = sequences
    dapo     sum m L / sum m                      loss_sum = sum m L, items = completion tokens
"""

from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


def group_advantages(rewards: torch.Tensor, num_generations: int,
                     scale_rewards: str = "group") -> tuple[torch.Tensor, int]:
    """(advantages [N], number of groups whose rewards are all equal) for rewards [N] of N / G prompts with
    G = `num_generations` consecutive completions each.

    advantage = reward - its group's mean, divided by the group's std (`group`, GRPO), the std of the whole
    batch (`batch`) or nothing (`none`, Dr. GRPO) — TRL's `scale_rewards`, with TRL's 1e-4 added to the
    std. A group whose rewards are all equal carries no signal: its advantages are exactly 0. Rewards of a
    group must all be here (gather them across ranks first).
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {', '.join(SCALE_REWARDS)}; got {scale_rewards!r}")
    if num_generations < 2 or rewards.dim() != 1 or rewards.numel() % num_generations:
        raise ValueError(f"rewards must be 1-D with a multiple of num_generations >= 2 entries; got shape "
                         f"{tuple(rewards.shape)} and num_generations={num_generations}")
    grouped = rewards.float().view(-1, num_generations)
    advantages = grouped - grouped.mean(-1, keepdim=True)
    if scale_rewards == "group":
        advantages = advantages / (grouped.std(-1, keepdim=True) + 1e-4)
    elif scale_rewards == "batch":
        advantages = advantages / (grouped.std() + 1e-4)
    flat = grouped.amax(-1) == grouped.amin(-1)
    advantages = advantages.masked_fill(flat[:, None], 0.0)
    return advantages.view(-1), int(flat.sum())


def grpo_token_losses(logps: torch.Tensor, old_logps: torch.Tensor | None, ref_logps: torch.Tensor | None,
                      advantages: torch.Tensor, *, epsilon_low: float = 0.2, epsilon_high: float = 0.2,
                      beta: float = 0.0) -> dict[str, torch.Tensor]:
    """Per-token [B, C] tensors: "loss" (L of the module doc), "kl" (0 when beta == 0), and the clip flags
    "clipped_low" (r < 1 - epsilon_low with A < 0), "clipped_high" (r > 1 + epsilon_high with A > 0) —
    the tokens whose gradient the clip removes, as TRL counts them. `old_logps` None means the first
    pass (old = logps, detached, so r == 1); `ref_logps` is needed when beta > 0."""
    if beta > 0 and ref_logps is None:
        raise ValueError("beta > 0 needs ref_logps (the reference model's token log-probs)")
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    adv = advantages[:, None]
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    loss = -torch.min(ratio * adv, clipped * adv)
    kl = torch.zeros_like(loss)
    if beta > 0:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        loss = loss + beta * kl
    return {"loss": loss, "kl": kl, "clipped_low": (ratio < 1 - epsilon_low) & (adv < 0),
            "clipped_high": (ratio > 1 + epsilon_high) & (adv > 0)}


def grpo_loss_sum(token_losses: torch.Tensor, completion_mask: torch.Tensor, loss_type: str = "dapo",
                  max_completion_length: int | None = None) -> tuple[torch.Tensor, int]:
    """(loss_sum, items) of per-token losses [B, C] under `loss_type` (table of the module doc)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}; got {loss_type!r}")
    mask = completion_mask.to(token_losses.dtype)
    per_sequence = (token_losses * mask).sum(-1)
    if loss_type == "grpo":
        return (per_sequence / mask.sum(-1).clamp(min=1)).sum(), token_losses.shape[0]
    if loss_type == "dr_grpo":
        if not max_completion_length or max_completion_length < completion_mask.shape[1]:
            raise ValueError("dr_grpo needs max_completion_length >= the completion width (the configured "
                             f"maximum, not the batch's), got {max_completion_length}")
        return per_sequence.sum() / max_completion_length, token_losses.shape[0]
    return per_sequence.sum(), int(completion_mask.sum())


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor | None, ref_logps: torch.Tensor | None,
              advantages: torch.Tensor, completion_mask: torch.Tensor, *, epsilon_low: float = 0.2,
              epsilon_high: float = 0.2, beta: float = 0.0, loss_type: str = "dapo",
              max_completion_length: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss of the whole batch, stats): logps, old_logps, ref_logps and completion_mask are [B, C] over the
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
