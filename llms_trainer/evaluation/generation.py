"""The generation eval (decoding itself is `llms_trainer.ops.generate.generate`, re-exported here).

Eval records are {"content": prompt}. Each rank generates greedily for its share of the prompts; the main
process writes save_dir/step_<n>.json = [{"prompt", "output"}, ...] in prompt order, atomically.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llms_trainer.evaluation import EvalDataError, encode_with_bos, read_jsonl
from llms_trainer.io import atomic_write
from llms_trainer.ops.generate import GenerationOutput, generate  # noqa: F401 (documented import path)
from llms_trainer.ops.ranks import gather_results, merge_results, rank_share


def load_generation_prompts(path: str | Path) -> list[str]:
    """Prompts of a JSONL file of {"content": "..."} records."""
    prompts = []
    for where, record in read_jsonl(path):
        content = record.get("content")
        if not isinstance(content, str) or not content.strip():
            raise EvalDataError(f"{where}: 'content' must be a non-empty string (the prompt to continue)")
        prompts.append(content)
    return prompts


def save_outputs(save_dir: Path, step: int, prompts: list[str], outputs: list[str]) -> Path:
    """Write save_dir/step_<step>.json = [{"prompt", "output"}, ...] atomically."""
    rows = [{"prompt": p, "output": o} for p, o in zip(prompts, outputs, strict=True)]
    data = json.dumps(rows, ensure_ascii=False, indent=1).encode("utf-8")
    return atomic_write(save_dir / f"step_{step}.json", data)


def evaluate_generation(model: Any, tokenizer: Any, prompts: list[str], accelerator: Any,
                        max_new_tokens: int = 32, save_dir: Path | None = None, step: int = 0,
                        batch_size: int = 8, encode: Callable[[str], list[int]] | None = None
                        ) -> dict[str, float]:
    """{"eval/generation/avg_new_tokens"} (new tokens up to and including the stop id); greedy; call on all
    ranks, each generates for its share of the prompts."""
    share = [(i, p) for i, p in rank_share(prompts, accelerator.process_index, accelerator.num_processes)
             if i is not None]
    encode = encode or (lambda prompt: encode_with_bos(tokenizer, prompt))
    out = generate(model, tokenizer, [encode(p) for _, p in share],
                   max_new_tokens=max_new_tokens, batch_size=batch_size, accelerator=accelerator)
    counts = out.completion_mask.sum(-1).tolist()
    local = [(i, (text, n)) for (i, _), text, n in zip(share, out.texts, counts, strict=True)]
    results = merge_results(gather_results(accelerator, local))
    if save_dir is not None and accelerator.is_main_process:
        save_outputs(Path(save_dir), step, prompts, [text for text, _ in results])
    return {"eval/generation/avg_new_tokens": sum(count for _, count in results) / len(results)}
