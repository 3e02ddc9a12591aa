"""Padded batches for a model: positions counted over real tokens, left-padded prompts ready to decode.

The pad id and rows padded on either side (`pad_id`, `pad_rows`) are the data layer's (`data/packing.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from llms_trainer.data.packing import pad_rows


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions over real tokens (cumsum - 1, clamped at 0): a left-padded row keeps its unpadded ones."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def left_padded(rows: Sequence[Sequence[int]], fill: int, device: Any) -> dict[str, torch.Tensor]:
    """`pad_rows(left=True)` plus position_ids, on `device`: position -1 is real (ready to generate from)."""
    batch = pad_rows(rows, fill, left=True)
    batch["position_ids"] = position_ids_from_mask(batch["attention_mask"])
    return {key: value.to(device) for key, value in batch.items()}


def pad_right(rows: torch.Tensor, width: int, value: int) -> torch.Tensor:
    """[B, n] → [B, width] filled with `value` on the right."""
    return torch.nn.functional.pad(rows, (0, width - rows.shape[1]), value=value)
