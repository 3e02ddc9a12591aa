"""Log-probabilities of labelled tokens under a causal LM (policy, reference and old-policy log-probs of the
DPO and GRPO stages).

Token t is scored by the logits at position t - 1, so column 0 can never be labelled. Only the positions
that score a labelled token go through the LM head, `chunk_tokens` of them at a time, with the fp32
log-softmax taken as `gathered logit - logsumexp(logits)` (llms_trainer.ops.lm_loss.target_logprobs), so
the [positions, vocab] logits never exist whole. Logits are divided by `temperature` first, as TRL's GRPO
does so the scored distribution is the sampled one. `autocast` (the accelerator's) runs the LM head under
the same mixed precision as the model's forward.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from llms_trainer.data.packing import IGNORE_INDEX
from llms_trainer.ops.lm_loss import DEFAULT_CHUNK_TOKENS, Autocast, target_logprobs
from llms_trainer.ops.padding import position_ids_from_mask


def token_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels_mask: torch.Tensor, *, temperature: float = 1.0,
                   position_ids: torch.Tensor | None = None, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                   autocast: Autocast = nullcontext) -> torch.Tensor:
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
    if not labels_mask.any():
        return torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)
    # position t scores token t + 1
    targets = F.pad(input_ids[:, 1:].masked_fill(~labels_mask[:, 1:], IGNORE_INDEX), (0, 1), value=IGNORE_INDEX)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
              "use_cache": False}
    scored = target_logprobs(model, inputs, targets, chunk_tokens=chunk_tokens, temperature=temperature,
                             autocast=autocast)
    return F.pad(scored[:, :-1], (1, 0))

