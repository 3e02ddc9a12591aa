"""Held-out negative log-likelihood and perplexity (eval_data/pretrain/nll.jsonl).

Each text is tokenized like a training document: BOS + text + EOS (`encode_document`). Targets are every
token after BOS (the closing EOS included, as in training); pads are never targets. A text longer
than `seq_length` tokens is cut into windows of `seq_length` inputs whose targets are the next tokens:
window k feeds ids[k*L : k*L + L] and predicts ids[k*L + 1 : k*L + L + 1], so every token after BOS is a
target exactly once (a window's first token is context only; it was the previous window's last target).
loss = total NLL / number of target tokens (nats per token), ppl = exp(loss). nats_per_char = total NLL /
number of characters in the texts: unlike loss and ppl it compares models with different tokenizers (before
and after a vocabulary extension).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from llms_trainer.data.packing import IGNORE_INDEX, pad_id
from llms_trainer.evaluation import EvalDataError, encode_with_bos, read_jsonl
from llms_trainer.ops.lm_loss import DEFAULT_CHUNK_TOKENS, Autocast, target_logprobs
from llms_trainer.ops.models import eval_mode
from llms_trainer.ops.ranks import batches, gather_results, merge_results, rank_share


def load_nll_texts(path: str | Path) -> list[str]:
    """Texts of a JSONL file of {"text": ...} records ("content" is accepted too)."""
    texts = []
    for where, record in read_jsonl(path):
        text = record.get("text", record.get("content"))
        if not isinstance(text, str) or not text.strip():
            raise EvalDataError(f"{where}: needs a non-empty string field 'text' (or 'content')")
        texts.append(text)
    return texts


def encode_document(tokenizer: Any, text: str) -> list[int]:
    """BOS + text + EOS token ids, the way the pretraining data path builds a document."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return encode_with_bos(tokenizer, text) + eos


def nll_windows(ids: list[int], seq_length: int) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) windows of at most seq_length tokens covering targets ids[1:] exactly once."""
    if seq_length < 1:
        raise ValueError(f"seq_length must be >= 1, got {seq_length}")
    windows = []
    for start in range(0, len(ids) - 1, seq_length):
        end = min(start + seq_length, len(ids) - 1)
        windows.append((ids[start:end], ids[start + 1:end + 1]))
    return windows


def window_batch(windows: list[tuple[list[int], list[int]]], fill: int, device: Any) -> tuple[dict, torch.Tensor]:
    """(model inputs, aligned targets with IGNORE_INDEX on padding) of one right-padded batch of windows."""
    width = max(len(inputs) for inputs, _ in windows)
    ids = torch.full((len(windows), width), fill, dtype=torch.long)
    labels = torch.full((len(windows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.long)
    for row, (inputs, targets) in enumerate(windows):
        ids[row, :len(inputs)] = torch.tensor(inputs)
        labels[row, :len(targets)] = torch.tensor(targets)
        mask[row, :len(inputs)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "use_cache": False}, labels.to(device)


def window_nll(model: Any, windows: list[tuple[list[int], list[int]]], fill: int, device: Any,
               chunk_tokens: int = DEFAULT_CHUNK_TOKENS, autocast: Autocast = nullcontext) -> list[tuple[float, int]]:
    """(summed NLL in nats, number of targets) per window, for one right-padded batch of windows.

    Only target positions go through the LM head, `chunk_tokens` at a time (lm_loss.target_logprobs)."""
    inputs, labels = window_batch(windows, fill, device)
    logprobs = target_logprobs(model, inputs, labels, chunk_tokens=chunk_tokens, autocast=autocast)
    sums = (-logprobs.double()).sum(dim=1).tolist()
    counts = (labels != IGNORE_INDEX).sum(dim=1).tolist()
    return list(zip(sums, counts, strict=True))


def load_chat_windows(path: str | Path, tokenizer: Any, seq_length: int) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) of held-out conversations (any SFT record format): targets are the assistant
    tokens only (-100 elsewhere), encoded exactly as SFT trains on them."""
    from llms_trainer.data.records import read_chat
    from llms_trainer.data.sft import ChatEncoder, ChatTokenizerError

    try:
        encoder = ChatEncoder(tokenizer, seq_length)
    except ChatTokenizerError as err:
        raise EvalDataError(f"chat_nll_eval: {err}") from None
    windows = []
    for where, record in read_jsonl(path):
        turns = read_chat(record)
        if isinstance(turns, str):
            raise EvalDataError(f"{where}: {turns}")
        sample = encoder.encode([turns])[0]
        if sample is not None:
            windows.append((sample.ids[:-1], sample.labels[1:]))
    return windows


def evaluate_nll(model: Any, tokenizer: Any, texts: list[str], accelerator: Any, seq_length: int,
                 batch_size: int = 8, prefix: str = "eval/nll") -> dict[str, float]:
    """{prefix/loss, prefix/ppl, prefix/nats_per_char} over all target tokens of `texts`; call on all ranks."""
    windows = [w for text in texts for w in nll_windows(encode_document(tokenizer, text), seq_length)]
    if not windows:
        raise EvalDataError("NLL texts give no target tokens; each text must encode to at least 2 tokens")
    total, count = window_totals(model, tokenizer, windows, accelerator, batch_size)
    loss = total / max(1, count)
    return {f"{prefix}/loss": loss, f"{prefix}/ppl": math.exp(min(loss, 700.0)),
            f"{prefix}/nats_per_char": total / max(1, sum(len(text) for text in texts))}


def evaluate_windows(model: Any, tokenizer: Any, windows: list[tuple[list[int], list[int]]], accelerator: Any,
                     batch_size: int, prefix: str) -> dict[str, float]:
    """{prefix/loss, prefix/ppl}: mean NLL over every target of `windows`; call on all ranks."""
    total, count = window_totals(model, tokenizer, windows, accelerator, batch_size)
    loss = total / max(1, count)
    return {f"{prefix}/loss": loss, f"{prefix}/ppl": math.exp(min(loss, 700.0))}


def window_totals(model: Any, tokenizer: Any, windows: list[tuple[list[int], list[int]]], accelerator: Any,
                  batch_size: int) -> tuple[float, int]:
    """(summed NLL in nats, target count) over every window, all ranks together; call on all ranks.

    Windows are split across ranks, so every rank runs the same number of forward passes."""
    share = rank_share(windows, accelerator.process_index, accelerator.num_processes)
    local: list[tuple[int | None, tuple[float, int]]] = []
    with eval_mode(model):
        for batch in batches(share, batch_size):
            per_window = window_nll(model, [w for _, w in batch], pad_id(tokenizer), accelerator.device,
                                    autocast=accelerator.autocast)
            local += [(index, result) for (index, _), result in zip(batch, per_window, strict=True)]
    results = merge_results(gather_results(accelerator, local))
    return sum(total for total, _ in results), sum(count for _, count in results)
