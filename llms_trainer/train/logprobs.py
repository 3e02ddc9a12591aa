"""Log-probabilities of labelled tokens under a causal LM (policy, reference and old-policy log-probs of the
DPO and GRPO stages).

Token t is scored by the logits at position t - 1, so column 0 can never be labelled. Only the positions
from the first labelled column on go through the LM head (`logits_to_keep`), and the fp32 log-softmax is
taken one row at a time as `gathered logit - logsumexp(logits)`, so at most one row of fp32 logits
[positions, vocab] exists at once next to the model's own logits. Logits are divided by `temperature` first,
as TRL's GRPO does so the scored distribution is the sampled one.
"""

from __future__ import annotations

import torch

from llms_trainer.evaluation import position_ids_from_mask


def token_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels_mask: torch.Tensor, *, temperature: float = 1.0,
                   position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] fp32: log p(input_ids[b, t] | input_ids[b, :t]) where labels_mask[b, t] is set, 0 elsewhere.

    Padding may be on either side; `position_ids` default to positions counted over real tokens
    (attention_mask cumsum - 1), so a left-padded row scores like the same row unpadded. Differentiable.
    """
    labels_mask = labels_mask.bool()
    if labels_mask.shape != input_ids.shape or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)}, attention_mask {tuple(attention_mask.shape)} "
                         f"and labels_mask {tuple(labels_mask.shape)} must have the same [batch, length] shape")
    if labels_mask[:, 0].any():
        raise ValueError("labels_mask[:, 0] is set: the first token has no context to be scored from")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    result = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    labelled_columns = labels_mask.any(0).nonzero()
    if len(labelled_columns) == 0:
        return result
    first = int(labelled_columns[0])
    keep = input_ids.shape[1] - first + 1  # logits at positions first-1 .. T-1
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False, logits_to_keep=keep).logits[:, :-1]
    targets = input_ids[:, first:]
    rows = []
    for row_logits, row_targets in zip(logits, targets, strict=True):
        scaled = row_logits.float() / temperature
        picked = scaled.gather(-1, row_targets[:, None]).squeeze(-1)
        rows.append(picked - torch.logsumexp(scaled, dim=-1))
    scored = torch.stack(rows)
    return torch.cat([result[:, :first], scored.masked_fill(~labels_mask[:, first:], 0.0)], dim=1)


def sequence_logprob_sum(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         labels_mask: torch.Tensor, *, temperature: float = 1.0,
                         position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """[B] fp32: the sum of `token_logprobs` over each row's labelled tokens (DPO's sequence log-prob)."""
    return token_logprobs(model, input_ids, attention_mask, labels_mask, temperature=temperature,
                          position_ids=position_ids).sum(-1)
