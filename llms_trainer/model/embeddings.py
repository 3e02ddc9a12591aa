"""Extend a causal LM's vocabulary to a larger tokenizer with mean-initialised embedding rows.

Rules for a row of a new token (input embeddings, and the output embeddings when they are not tied):
- "pieces": the mean of the old rows of the pieces the OLD tokenizer splits the new token's decoded text into
  (no special tokens; a lone "▁" piece only when it is the only piece);
- "special" (a special token) and "no_pieces" (text the old tokenizer cannot split into old pieces): the
  mean of all old rows.
Old rows stay bit-identical; tied input/output embeddings stay tied; `config.vocab_size` follows.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from llms_trainer.tokenizer import TokenizerError, new_output_dir
from llms_trainer.tokenizer.save import conform_tokenizer, save_tokenizer

SPACE_PIECE = "▁"
RULES = ("pieces", "special", "no_pieces")


def check_extends(old_tokenizer, new_tokenizer) -> None:
    """Every old id must name the same token in the new tokenizer (new tokens only appended)."""
    old_size, new_size = len(old_tokenizer), len(new_tokenizer)
    if new_size < old_size:
        raise TokenizerError(f"the new tokenizer has {new_size} tokens, fewer than the old one's {old_size}")
    ids = list(range(old_size))
    old, new = old_tokenizer.convert_ids_to_tokens(ids), new_tokenizer.convert_ids_to_tokens(ids)
    for i, (a, b) in enumerate(zip(old, new, strict=True)):
        if a != b:
            raise TokenizerError(f"the new tokenizer does not extend the old one: id {i} is {b!r}, was {a!r}; "
                                 "build it with utils/merge_tokenizer.py / utils/add_chat_tokens.py from the old one")


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    return ids


def old_piece_ids(old_tokenizer, text: str) -> list[int]:
    """Ids of `text` under the old tokenizer: no special tokens, lone "▁" pieces only when nothing else is left."""
    specials = _special_ids(old_tokenizer)
    ids = [i for i in old_tokenizer.encode(text, add_special_tokens=False) if i not in specials]
    words = [i for i in ids if old_tokenizer.convert_ids_to_tokens(i) != SPACE_PIECE]
    return words or ids


def init_plan(old_tokenizer, new_tokenizer) -> list[tuple[int, str, list[int]]]:
    """(new id, rule, old ids to average) for every token the new tokenizer adds; [] ids = all old rows."""
    specials = _special_ids(new_tokenizer)
    plan = []
    for token_id in range(len(old_tokenizer), len(new_tokenizer)):
        if token_id in specials:
            plan.append((token_id, "special", []))
            continue
        ids = old_piece_ids(old_tokenizer, new_tokenizer.decode([token_id]))
        plan.append((token_id, "pieces" if ids else "no_pieces", ids))
    return plan


@torch.no_grad()
def _fill_rows(weight: torch.Tensor, plan: list[tuple[int, str, list[int]]], old_size: int) -> None:
    """Overwrite the planned rows with means of old rows (computed in float32)."""
    everything = weight[:old_size].float().mean(0)
    for token_id, _, ids in plan:
        row = weight[ids].float().mean(0) if ids else everything
        weight[token_id] = row.to(weight.dtype)


def tied(model) -> bool:
    """Whether the output embeddings share storage with the input embeddings."""
    out = model.get_output_embeddings()
    return out is not None and out.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def extend_embeddings(model, old_tokenizer, new_tokenizer) -> dict[str, int]:
    """Resize `model` for `new_tokenizer` and mean-initialise the new rows in place; returns rows per rule."""
    check_extends(old_tokenizer, new_tokenizer)
    old_size, new_size = len(old_tokenizer), len(new_tokenizer)
    model_rows = model.get_input_embeddings().weight.shape[0]
    if model_rows < old_size:
        raise TokenizerError(f"the model has {model_rows} embedding rows, fewer than the old tokenizer's "
                             f"{old_size} tokens: --old-tokenizer is not this model's tokenizer")
    plan = init_plan(old_tokenizer, new_tokenizer)
    was_tied = tied(model)
    model.resize_token_embeddings(max(new_size, model_rows), mean_resizing=False)
    _fill_rows(model.get_input_embeddings().weight, plan, old_size)
    if not was_tied and model.get_output_embeddings() is not None:
        _fill_rows(model.get_output_embeddings().weight, plan, old_size)
    if was_tied and not tied(model):
        raise TokenizerError("resizing untied the input and output embeddings")
    model.config.get_text_config().vocab_size = max(new_size, model_rows)
    counts = Counter(rule for _, rule, _ in plan)
    return {rule: counts.get(rule, 0) for rule in RULES}


def _load(kind: str, path: Path, loader, **kwargs):
    if not path.is_dir():
        raise TokenizerError(f"{path}: no such {kind} directory")
    try:
        return loader(str(path), **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise TokenizerError(f"{path}: cannot load the {kind} ({err})") from err


def extend_model(model_dir: str | Path, old_tokenizer_dir: str | Path, new_tokenizer_dir: str | Path,
                 output: str | Path) -> dict:
    """Load model + tokenizers, extend, save model and new tokenizer as `output` (whole or not at all).

    The new tokenizer gets the BOS/pad conventions first (a `<|pad|>` it has to add gets a row too) and is
    saved with its tokenizer.model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, new_tokenizer_dir = Path(model_dir), Path(new_tokenizer_dir)
    if Path(output).exists():
        raise TokenizerError(f"{output} already exists; choose another --output or delete it")
    old_tokenizer = _load("tokenizer", Path(old_tokenizer_dir), AutoTokenizer.from_pretrained)
    new_tokenizer = _load("tokenizer", new_tokenizer_dir, AutoTokenizer.from_pretrained)
    conform_tokenizer(new_tokenizer)
    model = _load("model", model_dir, AutoModelForCausalLM.from_pretrained, dtype="auto")
    old_rows = model.get_input_embeddings().weight.shape[0]
    counts = extend_embeddings(model, old_tokenizer, new_tokenizer)
    with new_output_dir(output) as out:
        model.save_pretrained(str(out))
        save_tokenizer(new_tokenizer, out, source_dir=new_tokenizer_dir)
    return {"old_rows": old_rows, "new_rows": model.get_input_embeddings().weight.shape[0],
            "tied": tied(model), "rules": counts, "output": str(output)}
