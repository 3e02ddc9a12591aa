"""Extend a causal LM's vocabulary to a larger tokenizer with mean-initialised embedding rows.

Rules for a row of a new token:
- "pieces": the mean of the old rows of the pieces the OLD tokenizer splits the new token's decoded text into
  (no special tokens; a lone "▁" piece only when it is the only piece);
- "special" (a special token) and "no_pieces" (text the old tokenizer cannot split into old pieces): the
  mean of all old rows.
Which matrix follows which rule is the initialisation (`INITS`), and it decides the model's output at step 0:
- "pieces": input and output rows by the rules. A new token's logit is the mean of its pieces' logits, so
  new tokens compete with the old ones from the start (the best start measured on SmolLM2: README).
- "mean": input and output rows are the mean of all old rows. Every new token's logit is the mean of the old
  logits, so each gets at most 1/old_vocab of the probability mass an old token gets on average (Jensen):
  the old tokens' predictions barely change, new tokens start improbable and carry no meaning as inputs.
- "pieces_in_mean_out": input rows by the rules (new tokens read as their pieces), output rows the mean of all
  old rows (predictions of old tokens nearly unchanged, new tokens start improbable). Needs separate output
  embeddings: a tied model is refused unless `untie=True` copies the shared matrix into its own output
  matrix first (vocab × hidden more parameters; the model stays untied from then on).
Old rows stay bit-identical; tied input/output embeddings stay tied (unless untied); `config.vocab_size` follows.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from llms_trainer.tokenizer import TokenizerError, new_output_dir
from llms_trainer.tokenizer.save import conform_tokenizer, save_tokenizer

SPACE_PIECE = "▁"
RULES = ("pieces", "special", "no_pieces")
INITS = ("pieces", "mean", "pieces_in_mean_out")


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
def _fill_rows(weight: torch.Tensor, plan: list[tuple[int, str, list[int]]], old_size: int,
               by_pieces: bool = True) -> None:
    """Overwrite the planned rows with means of old rows (computed in float32): of the planned old ids when
    `by_pieces`, else of all old rows."""
    everything = weight[:old_size].float().mean(0)
    for token_id, _, ids in plan:
        row = weight[ids].float().mean(0) if ids and by_pieces else everything
        weight[token_id] = row.to(weight.dtype)


def tied(model) -> bool:
    """Whether the output embeddings share storage with the input embeddings."""
    out = model.get_output_embeddings()
    return out is not None and out.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def untie_output_embeddings(model) -> None:
    """Give a tied model its own output matrix, a copy of the shared one (same outputs, more parameters)."""
    out = model.get_output_embeddings()
    out.weight = torch.nn.Parameter(out.weight.detach().clone())
    model.config.tie_word_embeddings = False
    model.config.get_text_config().tie_word_embeddings = False


def extend_embeddings(model, old_tokenizer, new_tokenizer, init: str = "pieces",
                      untie: bool = False) -> dict[str, int]:
    """Resize `model` for `new_tokenizer` and initialise the new rows in place by `init` (see the module
    docstring); returns rows per rule (of the input rows under "pieces"/"pieces_in_mean_out")."""
    if init not in INITS:
        raise TokenizerError(f"unknown initialisation {init!r}; use one of {', '.join(INITS)}")
    check_extends(old_tokenizer, new_tokenizer)
    old_size, new_size = len(old_tokenizer), len(new_tokenizer)
    model_rows = model.get_input_embeddings().weight.shape[0]
    if model_rows < old_size:
        raise TokenizerError(f"the model has {model_rows} embedding rows, fewer than the old tokenizer's "
                             f"{old_size} tokens: --old-tokenizer is not this model's tokenizer")
    if untie and tied(model):
        untie_output_embeddings(model)
    was_tied = tied(model)
    if init == "pieces_in_mean_out" and was_tied:
        raise TokenizerError("initialisation pieces_in_mean_out needs separate output embeddings but this model "
                             "ties them to the input embeddings; add --untie (copies them: vocab × hidden more "
                             "parameters) or use --init pieces or --init mean")
    plan = init_plan(old_tokenizer, new_tokenizer)
    model.resize_token_embeddings(max(new_size, model_rows), mean_resizing=False)
    _fill_rows(model.get_input_embeddings().weight, plan, old_size, by_pieces=init != "mean")
    if not was_tied and model.get_output_embeddings() is not None:
        _fill_rows(model.get_output_embeddings().weight, plan, old_size, by_pieces=init == "pieces")
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
                 output: str | Path, init: str = "pieces", untie: bool = False) -> dict:
    """Load model + tokenizers, extend (`init`, `untie`: see extend_embeddings), save model and new tokenizer
    as `output` (whole or not at all).

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
    counts = extend_embeddings(model, old_tokenizer, new_tokenizer, init, untie)
    with new_output_dir(output) as out:
        model.save_pretrained(str(out))
        save_tokenizer(new_tokenizer, out, source_dir=new_tokenizer_dir)
    return {"old_rows": old_rows, "new_rows": model.get_input_embeddings().weight.shape[0],
            "tied": tied(model), "rules": counts, "init": init,
            "output": str(output)}
