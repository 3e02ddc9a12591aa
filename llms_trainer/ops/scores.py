"""Sequence scores of a 1-label classifier (a reward model) and `score_pairs`, what RL scores with.

Score: the head's value at the last token whose attention_mask is 1 (`sequence_scores`), read from the
head's per-token output, so left or right padding and pad == eos give the same score; positions count real
tokens only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from llms_trainer.data.packing import pad_id, pad_rows
from llms_trainer.data.pairs import encode_sequences
from llms_trainer.ops.models import eval_mode, unwrapped
from llms_trainer.ops.padding import position_ids_from_mask
from llms_trainer.ops.ranks import batches, gather_results, merge_results, rank_share

Row = list[int]


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


def score_head(model: torch.nn.Module) -> torch.nn.Module:
    """The score head of a (wrapped) sequence classifier."""
    model = unwrapped(model, peft=True)
    head = getattr(model, "score", None)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no score head; load the model with "
                         "AutoModelForSequenceClassification (num_labels=1)")
    return head


def sequence_scores(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[N] float32 score of each row: the head's value at its last real token (see the module doc).

    `model` is called as a whole (so DDP and DeepSpeed see their forward); the head's per-token output is
    taken with a forward hook, never from transformers' own pad-token search.
    """
    captured: list[torch.Tensor] = []
    handle = score_head(model).register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
              use_cache=False)
    finally:
        handle.remove()
    return last_token_scores(captured[-1][..., 0].float(), attention_mask.to(captured[-1].device))


def _device(model: torch.nn.Module, accelerator: Any) -> torch.device:
    """The accelerator's device, else the model's."""
    return accelerator.device if accelerator is not None else next(model.parameters()).device


def score_rows(model: torch.nn.Module, rows: list[Row], fill: int, device) -> list[float]:
    """Scores of token rows in one forward (rows padded on the right; no grad)."""
    batch = pad_rows(rows, fill)
    return sequence_scores(model, batch["input_ids"].to(device), batch["attention_mask"].to(device)).tolist()


def scored_in_shares(model: torch.nn.Module, items: list, rows_of: Callable[[Any], list[Row]], fill: int,
                     batch_size: int, accelerator: Any) -> list:
    """Per item, the scores of its rows (`rows_of(item)` → rows), split across processes and gathered once."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    share = rank_share(items, rank, world)
    local = []
    with eval_mode(model):
        for batch in batches(share, batch_size):
            groups = [rows_of(item) for _, item in batch]
            scores = score_rows(model, [row for group in groups for row in group], fill, _device(model, accelerator))
            width = len(groups[0])
            per_item = [scores[i * width:(i + 1) * width] for i in range(len(groups))]
            local += [(index, result) for (index, _), result in zip(batch, per_item, strict=True)]
    return merge_results(gather_results(accelerator, local) if accelerator is not None else local)


def score_pairs(model: torch.nn.Module, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 8,
                accelerator: Any = None, seq_length: int | None = None) -> list[float]:
    """The reward of each (prompt, response), encoded as in training; batched, no grad.

    Without `accelerator` this process scores every pair on the model's device. With it the pairs are split
    across processes and every process returns all scores (all processes must call it, with the same pairs).
    `seq_length` defaults to the one the model was trained with (config `reward_seq_length`), else to its
    max_position_embeddings.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        return []
    config = unwrapped(model, peft=True).config
    if getattr(config, "pad_token_id", None) is None:  # transformers refuses batches without one (never read here)
        config.pad_token_id = pad_id(tokenizer)
    length = (seq_length or getattr(config, "reward_seq_length", None)
              or getattr(config, "max_position_embeddings", None) or 2048)
    rows = encode_sequences(tokenizer, list(prompts), list(responses), length)
    scores = scored_in_shares(model, rows, lambda row: [row], pad_id(tokenizer), batch_size, accelerator)
    return [s[0] for s in scores]
