"""Evaluation during training: single-choice accuracy, greedy generation, held-out NLL.

Every `evaluate_*` function is called on ALL ranks. It gives rank r the items `items[r::world]`, pads each
rank's share to the same length with dummy copies (so every rank runs the same number of forward passes,
which DeepSpeed ZeRO-3 requires), gathers the per-item results from all ranks and returns the same flat
dict of floats everywhere (`llms_trainer.ops.ranks`). This module holds what evaluators share beyond the
model operations of `llms_trainer.ops`: JSONL reading with file:line errors and BOS-prefixed prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llms_trainer.data.records import UnusableJSON, load_json_line


class EvalDataError(ValueError):
    """An evaluation file or record is unusable; the message names the file (and line) and the fix."""


def read_jsonl(path: str | Path) -> list[tuple[str, dict]]:
    """Records of a JSONL file as (where, record) with where = "file:line"; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{path}: evaluation file not found; check the path in the eval config")
    rows: list[tuple[str, dict]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = load_json_line(line)
            except json.JSONDecodeError as err:
                raise EvalDataError(f"{where}: invalid JSON ({err.msg}); fix or remove the line") from None
            except UnusableJSON as err:
                raise EvalDataError(f"{where}: {err}; fix or remove the line") from None
            if not isinstance(record, dict):
                raise EvalDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            rows.append((where, record))
    if not rows:
        raise EvalDataError(f"{path}: no records; add at least one JSON line or drop the file from eval")
    return rows


def encode_with_bos(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` with BOS in front, as the training data path builds them (no second BOS when the
    text already starts with the BOS token, e.g. a prompt rendered by a chat template)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    bos = tokenizer.bos_token_id
    return ids if bos is None or ids[:1] == [bos] else [bos] + ids
