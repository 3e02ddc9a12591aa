"""DPO stage: the pure loss.

The stage plumbing (config section, reference model, data, registration) is added by the DPO stage issue.
Engine form: a stage returns `dpo_loss_sum(...)` = (sum of per-pair losses, number of pairs); the engine
divides the step's summed losses by the step's pairs, which is the batch-mean loss.

Notation (TRL DPOTrainer's, `loss_type` names as in TRL): per pair, with log-probs summed over the
completion tokens (`llms_trainer.train.logprobs.sequence_logprob_sum`),

    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)

    sigmoid (default)  -(1 - eps) log σ(β h) - eps log σ(-β h)      DPO (Rafailov et al. 2023, Eq. 7);
                                                                    eps > 0 is conservative DPO (cDPO,
                                                                    Mitchell 2023), TRL's label_smoothing
    robust             [-(1 - eps) log σ(β h) + eps log σ(-β h)] / (1 - 2 eps)
                                                                    robust DPO (Chowdhury et al. 2024),
                                                                    an unbiased loss under label flips of
                                                                    probability eps < 0.5
    ipo                (h - 1 / (2 β))^2                            IPO (Azar et al. 2023, Eq. 17); TRL feeds
                                                                    it per-token MEAN log-probs, so a stage
                                                                    should too
    hinge              max(0, 1 - β h)                              SLiC / RSO hinge; 1/β is the margin

Implicit rewards: chosen = β (policy_chosen - ref_chosen), rejected = β (policy_rejected - ref_rejected),
detached (they are statistics, not part of the loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge")


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *, beta: float = 0.1,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses [B], chosen_rewards [B], rejected_rewards [B]) per pair, by the formulas of the module doc."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}; got {loss_type!r}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type in ("ipo", "hinge"):
        raise ValueError(f"label_smoothing applies to the sigmoid and robust losses, not {loss_type!r}")
    h = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * h)
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def dpo_loss_sum(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                 ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *, beta: float = 0.1,
                 loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> tuple[torch.Tensor, int]:
    """(sum of the per-pair losses, number of pairs): the engine's sum form of `dpo_loss`."""
    losses, _, _ = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                            beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
    return losses.sum(), losses.numel()
