"""Greedy generation on fixed prompts (eval_data/{pretrain,sft}/generation.jsonl).

Records are {"content": prompt}. Each rank generates for its share of the prompts (left-padded batches,
greedy, `max_new_tokens`); the main process writes save_dir/step_<n>.json = [{"prompt", "output"}, ...] in
prompt order, atomically. New tokens are counted up to and including the first end-of-sequence token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llms_trainer.evaluation import (
    EvalDataError,
    batches,
    encode_with_bos,
    eval_mode,
    gather_results,
    is_zero3,
    left_padded,
    merge_results,
    pad_id,
    rank_share,
    read_jsonl,
)
from llms_trainer.metrics import atomic_write


def load_generation_prompts(path: str | Path) -> list[str]:
    """Prompts of a JSONL file of {"content": "..."} records."""
    prompts = []
    for where, record in read_jsonl(path):
        content = record.get("content")
        if not isinstance(content, str) or not content.strip():
            raise EvalDataError(f"{where}: 'content' must be a non-empty string (the prompt to continue)")
        prompts.append(content)
    return prompts


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end a generation: the tokenizer's EOS and the model's generation_config EOS ids."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
    return {int(i) for i in ids}


def new_token_count(tokens: list[int], stops: set[int]) -> int:
    """Generated tokens up to and including the first stop token."""
    for position, token in enumerate(tokens):
        if token in stops:
            return position + 1
    return len(tokens)


def generate_greedy(model: Any, tokenizer: Any, prompts: list[str], device: Any, max_new_tokens: int,
                    batch_size: int = 8, synced_gpus: bool = False) -> list[tuple[str, int]]:
    """(output text, new token count) per prompt; `model` must be unwrapped."""
    stops = stop_ids(model, tokenizer)
    fill = pad_id(tokenizer)
    results: list[tuple[str, int]] = []
    for batch in batches(prompts, batch_size):
        inputs = left_padded([encode_with_bos(tokenizer, p) for p in batch], fill, device)
        inputs.pop("position_ids")  # generate derives positions from the attention mask
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=fill,
                             synced_gpus=synced_gpus)
        for row in out[:, inputs["input_ids"].shape[1]:].tolist():
            count = new_token_count(row, stops)
            results.append((tokenizer.decode(row[:count], skip_special_tokens=True), count))
    return results


def save_outputs(save_dir: Path, step: int, prompts: list[str], outputs: list[str]) -> Path:
    """Write save_dir/step_<step>.json = [{"prompt", "output"}, ...] atomically."""
    rows = [{"prompt": p, "output": o} for p, o in zip(prompts, outputs, strict=True)]
    data = json.dumps(rows, ensure_ascii=False, indent=1).encode("utf-8")
    return atomic_write(save_dir / f"step_{step}.json", data)


def evaluate_generation(model: Any, tokenizer: Any, prompts: list[str], accelerator: Any,
                        max_new_tokens: int = 32, save_dir: Path | None = None, step: int = 0,
                        batch_size: int = 8) -> dict[str, float]:
    """{"eval/generation/avg_new_tokens"}; call on all ranks, each generates for its share of prompts."""
    share = rank_share(prompts, accelerator.process_index, accelerator.num_processes)
    unwrapped = accelerator.unwrap_model(model)
    with eval_mode(model):
        generated = generate_greedy(unwrapped, tokenizer, [p for _, p in share], accelerator.device,
                                    max_new_tokens, batch_size, synced_gpus=is_zero3(accelerator))
    results = merge_results(gather_results(accelerator, [(i, r) for (i, _), r in zip(share, generated, strict=True)]))
    if save_dir is not None and accelerator.is_main_process:
        save_outputs(Path(save_dir), step, prompts, [text for text, _ in results])
    return {"eval/generation/avg_new_tokens": sum(count for _, count in results) / len(results)}
