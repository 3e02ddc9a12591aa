"""The conventions every tokenizer this project trains with or writes follows, and the one way to save it.

- BOS: `tokenizer(text)` gives BOS + text, exactly the ids training and evaluation build by hand (one BOS,
  no EOS); tokenizers without a BOS token add nothing, as training does.
- Pad: a pad token distinct from EOS. An existing one is kept; otherwise `<unk>` when the tokenizer has one
  distinct from BOS/EOS (SentencePiece models with byte fallback never produce it, and it is already an
  embedding row); otherwise a new special token `<|pad|>` is added (the model then needs one more row).
- SentencePiece bases keep `tokenizer.model` beside `tokenizer.json` (llama.cpp's converter and the slow
  tokenizer read it); its pieces are checked against the tokenizer's first ids before it is written.
"""

from __future__ import annotations

from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from llms_trainer.tokenizer import TokenizerError

PAD_TOKEN = "<|pad|>"  # added only when a tokenizer has no usable pad token
SP_MODEL = "tokenizer.model"
_SP_BYTES = "_llms_trainer_sp_model"  # tokenizer.model bytes read when the tokenizer was conformed
_PROBE = "a"


def pad_candidate(tokenizer) -> str | None:
    """The pad token the conventions pick among existing tokens, or None when one must be added."""
    eos = tokenizer.eos_token
    if tokenizer.pad_token is not None and tokenizer.pad_token != eos:
        return str(tokenizer.pad_token)
    unk = tokenizer.unk_token
    if unk is not None and unk not in (eos, tokenizer.bos_token):
        return str(unk)
    return None


def _set_bos(tokenizer) -> None:
    """Make `tokenizer(text)` start with exactly one BOS (none without a BOS token) and end without EOS."""
    has_bos = tokenizer.bos_token_id is not None
    if getattr(tokenizer, "add_bos_token", None) != has_bos or getattr(tokenizer, "add_eos_token", False):
        tokenizer.add_eos_token = False
        tokenizer.add_bos_token = has_bos
    ids = tokenizer(_PROBE)["input_ids"]
    plain = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    expected = ([tokenizer.bos_token_id] if has_bos else []) + plain
    if ids != expected:
        raise TokenizerError(f"{type(tokenizer).__name__} cannot be made to add BOS as training does: "
                             f"tokenizer({_PROBE!r}) gives {ids}, expected {expected}")


def _remember_sentencepiece(tokenizer) -> None:
    """Keep the bytes of the tokenizer.model it was loaded with (the file may be rotated away later);
    TokenizerError when that file does not belong to the tokenizer."""
    if hasattr(tokenizer, _SP_BYTES):
        return
    vocab_file = getattr(tokenizer, "vocab_file", None)
    path = Path(vocab_file) if isinstance(vocab_file, str) and vocab_file.endswith(".model") else None
    model_bytes = path.read_bytes() if path is not None and path.is_file() else None
    if model_bytes is not None:
        check_sentencepiece_matches(tokenizer, model_bytes, str(path))
    setattr(tokenizer, _SP_BYTES, model_bytes)


def conform_tokenizer(tokenizer) -> list[str]:
    """Apply the module's BOS and pad conventions in place; returns the tokens it had to add ([] or ["<|pad|>"]).

    Idempotent. Call it where a tokenizer is loaded, before a model is sized to it.
    """
    from tokenizers import AddedToken

    _remember_sentencepiece(tokenizer)
    added = []
    pad = pad_candidate(tokenizer)
    if pad is None:
        tokenizer.add_special_tokens({"pad_token": AddedToken(PAD_TOKEN, special=True, normalized=False)})
        added.append(PAD_TOKEN)
    elif tokenizer.pad_token != pad:
        tokenizer.pad_token = pad
    _set_bos(tokenizer)
    return added


def _sentencepiece_bytes(tokenizer, source_dir: str | Path | None) -> tuple[bytes | None, str]:
    """(tokenizer.model bytes, where they came from): source_dir, then what the tokenizer was loaded with."""
    if source_dir is not None and (Path(source_dir) / SP_MODEL).is_file():
        return (Path(source_dir) / SP_MODEL).read_bytes(), str(Path(source_dir) / SP_MODEL)
    _remember_sentencepiece(tokenizer)
    return getattr(tokenizer, _SP_BYTES), str(getattr(tokenizer, "vocab_file", None) or SP_MODEL)


def check_sentencepiece_matches(tokenizer, model_bytes: bytes, where: str) -> None:
    """The SentencePiece model's pieces must be the tokenizer's first ids (added tokens may follow)."""
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    pieces = [p.piece for p in proto.pieces]
    if len(tokenizer) < len(pieces) or tokenizer.convert_ids_to_tokens(list(range(len(pieces)))) != pieces:
        raise TokenizerError(f"{where}: its {len(pieces)} pieces are not the first ids of the tokenizer "
                             f"({len(tokenizer)} tokens); it belongs to another tokenizer")


def save_tokenizer(tokenizer, out_dir: str | Path, source_dir: str | Path | None = None) -> Path | None:
    """Save `tokenizer` into `out_dir` following the conventions; returns the tokenizer.model written, if any.

    tokenizer.model comes from `source_dir` when it holds one, else from the file the tokenizer was loaded
    with. Never changes the tokenizer's size: a tokenizer that would need a new pad token is an error (call
    `conform_tokenizer` where it is loaded, before sizing a model to it).
    """
    if pad_candidate(tokenizer) is None:
        raise TokenizerError("the tokenizer has no pad token distinct from EOS; call conform_tokenizer on it "
                             "before sizing a model to it")
    conform_tokenizer(tokenizer)
    model_bytes, where = _sentencepiece_bytes(tokenizer, source_dir)
    if model_bytes is not None:
        check_sentencepiece_matches(tokenizer, model_bytes, where)
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(str(out_dir))
    if model_bytes is None:
        return None
    (out_dir / SP_MODEL).write_bytes(model_bytes)
    return out_dir / SP_MODEL
