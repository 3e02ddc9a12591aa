"""Merge the pieces of a newly trained SentencePiece model into a base tokenizer.

SentencePiece bases (a `.model` file, or an HF tokenizer dir holding `tokenizer.model`) are merged at the
model-proto level: new pieces are appended after the old ones, so every old id keeps its piece, and their
scores sit below every base score, so the base's merges keep priority (BPE merges follow piece scores).
BPE scores are distinct float32 values in the new model's order, and tokenizer.json's merges are ranked by
score as SentencePiece ranks them, so tokenizer.model and tokenizer.json encode text alike.
A new piece that the merged model can never produce from its own text (a BPE merge path blocked by base
merges) is dropped, so every appended piece encodes to its own id. The output is an HF tokenizer dir that
also holds the merged `tokenizer.model` and follows the BOS and pad conventions of `save.py`.

HF fast bases without a SentencePiece model get the new pieces as added tokens ("▁" turned into a space and
stripped), skipping empty or whitespace-only strings, duplicates, and strings the base already encodes as
one token.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sentencepiece as spm
from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from llms_trainer.tokenizer import TokenizerError, new_output_dir
from llms_trainer.tokenizer.save import SP_MODEL, conform_tokenizer, save_tokenizer
from llms_trainer.tokenizer.train import texts_from_file

REPORT = "merge_report.json"
Piece = sp_pb2.ModelProto.SentencePiece
APPENDABLE = (Piece.NORMAL, Piece.USER_DEFINED)  # never control, unknown, byte or unused pieces
MODEL_TYPE_NAMES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


def read_proto(path: str | Path) -> sp_pb2.ModelProto:
    """A SentencePiece model proto; TokenizerError when the file is missing or not a model."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"{path}: no such file")
    proto = sp_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except (DecodeError, OSError) as err:
        raise TokenizerError(f"{path}: not a SentencePiece .model file ({err})") from err
    if not proto.pieces:
        raise TokenizerError(f"{path}: not a SentencePiece .model file (no pieces)")
    return proto


def bpe_scores(floor: float, count: int) -> list[float]:
    """`count` float32 scores strictly decreasing from just below `floor`, 1 apart where float32 allows.

    float32 spaces representable values 64 apart near -1e9 (Mistral scores its whitespace pieces -1e9), so
    "trained score + shift" would round neighbouring pieces to the same score and tie their merge order.
    """
    scores, current = [], np.float32(floor)
    for _ in range(count):
        lower = np.float32(current - np.float32(1.0))
        current = lower if lower < current else np.nextafter(current, np.float32(-np.inf))
        scores.append(float(current))
    return scores


def appended_scores(base: sp_pb2.ModelProto, pieces: list[Piece]) -> list[float]:
    """Scores of appended pieces, all below every base score, in the new model's score order.

    BPE merges follow score order only, so each piece gets its own exactly representable float32 rank;
    unigram scores are log-probabilities, so they keep their spacing, shifted below the base.
    """
    floor = min((p.score for p in base.pieces if p.type == Piece.NORMAL), default=0.0)
    if base.trainer_spec.model_type != sp_pb2.TrainerSpec.BPE:
        shift = floor - 1.0 - max((p.score for p in pieces), default=0.0)
        return [p.score + shift for p in pieces]
    ranked = sorted(range(len(pieces)), key=lambda i: -pieces[i].score)  # stable: ties keep model order
    scores = [0.0] * len(pieces)
    for index, score in zip(ranked, bpe_scores(floor, len(pieces)), strict=True):
        scores[index] = score
    return scores


def merge_protos(base: sp_pb2.ModelProto, add: sp_pb2.ModelProto,
                 drop: frozenset[str] = frozenset()) -> tuple[sp_pb2.ModelProto, list[str], int]:
    """(merged proto, appended pieces, pieces skipped because the base has them).

    Appended pieces keep the new model's order; their scores lie below the lowest base score
    (`appended_scores`).
    """
    merged = sp_pb2.ModelProto()
    merged.CopyFrom(base)
    existing = {p.piece for p in base.pieces}
    new: list[Piece] = []
    skipped = 0
    for piece in (p for p in add.pieces if p.type in APPENDABLE):
        if piece.piece in existing:
            skipped += 1
        elif piece.piece not in drop:
            existing.add(piece.piece)
            new.append(piece)
    for piece, score in zip(new, appended_scores(base, new), strict=True):
        merged.pieces.add(piece=piece.piece, score=score, type=piece.type)
    merged.trainer_spec.vocab_size = len(merged.pieces)
    return merged, [p.piece for p in new], skipped


def unreachable_pieces(merged: sp_pb2.ModelProto, first_new_id: int) -> list[str]:
    """Appended normal pieces that do not encode to their own id when their text is encoded alone."""
    check = sp_pb2.ModelProto()
    check.CopyFrom(merged)
    check.normalizer_spec.add_dummy_prefix = False
    sp = spm.SentencePieceProcessor(model_proto=check.SerializeToString())
    pieces = [(i, merged.pieces[i]) for i in range(first_new_id, len(merged.pieces))]
    return [p.piece for i, p in pieces if p.type == Piece.NORMAL and sp.encode(p.piece.replace("▁", " ")) != [i]]


def merge_reachable(base: sp_pb2.ModelProto, add: sp_pb2.ModelProto) -> tuple[sp_pb2.ModelProto, list[str], int, int]:
    """merge_protos, then drop unreachable pieces until none is left: (merged, appended, skipped, dropped)."""
    drop: frozenset[str] = frozenset()
    while True:
        merged, appended, skipped = merge_protos(base, add, drop)
        blocked = unreachable_pieces(merged, len(base.pieces))
        if not blocked:
            return merged, appended, skipped, len(drop)
        drop = drop | frozenset(blocked)


def chars_per_token(encode: Callable[[str], list[int]], texts: list[str]) -> dict | None:
    """{"characters", "tokens", "chars_per_token"} of `texts` under `encode`, or None without texts."""
    if not texts:
        return None
    chars, tokens = sum(map(len, texts)), sum(len(encode(t)) for t in texts)
    return {"characters": chars, "tokens": tokens, "chars_per_token": round(chars / max(tokens, 1), 4)}


def _load_hf(path: Path, **kwargs):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise TokenizerError(f"{path}: cannot load as an HF tokenizer ({err})") from err


def _special_tokens(proto: sp_pb2.ModelProto) -> dict:
    """unk/bos/eos token strings named by the proto's trainer spec (None when the id is -1)."""
    spec = proto.trainer_spec
    named = {"unk_token": spec.unk_id, "bos_token": spec.bos_id, "eos_token": spec.eos_id}
    return {k: (proto.pieces[i].piece if 0 <= i < len(proto.pieces) else None) for k, i in named.items()}


def order_merges_by_score(tokenizer_file: Path, proto: sp_pb2.ModelProto) -> None:
    """Rewrite tokenizer.json's BPE merges in SentencePiece's order: by the merged piece's score, then id.

    transformers ranks converted merges by piece id, which differs from SentencePiece wherever scores do not
    fall with the id (Mistral's whitespace pieces, scored -1e9): then tokenizer.json and tokenizer.model
    would encode the same text differently.
    """
    state = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    ids = {p.piece: i for i, p in enumerate(proto.pieces)}
    scores = {p.piece: p.score for p in proto.pieces}

    def rank(merge: list[str] | str) -> tuple[float, int, int, int]:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        return -scores[left + right], ids[left + right], ids[left], ids[right]

    state["model"]["merges"] = sorted(state["model"]["merges"], key=rank)
    tokenizer_file.write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")


def write_sp_tokenizer(merged: sp_pb2.ModelProto, base_dir: Path | None, out: Path):
    """Write tokenizer.model and the HF files into `out`; returns the HF tokenizer.

    An HF base dir lends its tokenizer_config.json (class, special tokens); a bare `.model` becomes a
    LlamaTokenizer with the proto's unk/bos/eos. Both follow the BOS and pad conventions of `save`.
    """
    from transformers import LlamaTokenizer

    (out / SP_MODEL).write_bytes(merged.SerializeToString())
    if base_dir is not None:
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (base_dir / name).is_file():
                (out / name).write_bytes((base_dir / name).read_bytes())
        tokenizer = _load_hf(out)
    else:
        tokenizer = LlamaTokenizer.from_pretrained(str(out), **_special_tokens(merged))
    tokenizer.save_pretrained(str(out))
    if merged.trainer_spec.model_type == sp_pb2.TrainerSpec.BPE:
        order_merges_by_score(out / "tokenizer.json", merged)
        tokenizer = _load_hf(out)
    pieces = [p.piece for p in merged.pieces]
    if tokenizer.convert_ids_to_tokens(list(range(len(pieces)))) != pieces or len(tokenizer) != len(pieces):
        raise TokenizerError(f"the HF tokenizer built from the merged model disagrees with its {len(pieces)} pieces")
    conform_tokenizer(tokenizer)
    save_tokenizer(tokenizer, out, source_dir=out)
    return tokenizer


def hf_encoder(tokenizer) -> Callable[[str], list[int]]:
    """Text → ids without special tokens, as the data path tokenizes text."""
    return lambda text: tokenizer.encode(text, add_special_tokens=False)


def merge_sentencepiece(base_proto: sp_pb2.ModelProto, add: sp_pb2.ModelProto, base_dir: Path | None,
                        out: Path, texts: list[str], add_path: Path) -> dict:
    """Merge into a SentencePiece base and write the output dir; returns the report fields.

    Characters per token are measured with the tokenizer training uses (tokenizer.json);
    `sentencepiece_mismatches` counts report texts that tokenizer.model encodes differently (expected 0).
    """
    base_type, add_type = base_proto.trainer_spec.model_type, add.trainer_spec.model_type
    if base_type != add_type or base_type not in (1, 2):
        raise TokenizerError(
            f"{add_path}: a {MODEL_TYPE_NAMES.get(add_type)} model cannot be merged into a "
            f"{MODEL_TYPE_NAMES.get(base_type)} base; train it with --model-type {MODEL_TYPE_NAMES.get(base_type)}")
    if base_dir is not None:
        size = len(_load_hf(base_dir))
        if size != len(base_proto.pieces):
            raise TokenizerError(
                f"{base_dir}: the HF tokenizer has {size} tokens but its tokenizer.model {len(base_proto.pieces)}; "
                "merge into the plain SentencePiece model first, then add special tokens (utils/add_chat_tokens.py)")
    merged, appended, skipped, dropped = merge_reachable(base_proto, add)
    tokenizer = write_sp_tokenizer(merged, base_dir, out)
    before = spm.SentencePieceProcessor(model_proto=base_proto.SerializeToString())
    after = spm.SentencePieceProcessor(model_proto=merged.SerializeToString())
    encode = hf_encoder(tokenizer)
    return {"kind": "sentencepiece", "base_size": len(base_proto.pieces), "added": len(appended),
            "skipped_existing": skipped, "dropped_unreachable": dropped, "final_size": len(tokenizer),
            "pad_token": tokenizer.pad_token,
            "before": chars_per_token(before.encode, texts), "after": chars_per_token(encode, texts),
            "sentencepiece_mismatches": sum(after.encode(t) != encode(t) for t in texts),
            "added_sample": appended[:20]}


def hf_candidates(add: sp_pb2.ModelProto) -> list[str]:
    """New pieces as plain strings: "▁" → space, stripped, no empty/whitespace-only, no duplicates."""
    seen: dict[str, None] = {}
    for piece in add.pieces:
        text = piece.piece.replace("▁", " ").strip()
        if piece.type in APPENDABLE and text:
            seen.setdefault(text, None)
    return list(seen)


def merge_hf(base_dir: Path, add: sp_pb2.ModelProto, out: Path, texts: list[str]) -> dict:
    """Add the new pieces to an HF fast tokenizer as tokens and write it into `out`."""
    tokenizer = _load_hf(base_dir)
    base_size = len(tokenizer)
    encode = hf_encoder(tokenizer)
    before = chars_per_token(encode, texts)
    candidates = hf_candidates(add)
    new = [t for t in candidates if len(encode(t)) != 1]
    tokenizer.add_tokens(new)
    special_added = conform_tokenizer(tokenizer)
    save_tokenizer(tokenizer, out)
    return {"kind": "hf_tokens", "base_size": base_size, "added": len(new),
            "skipped_existing": len(candidates) - len(new), "dropped_unreachable": 0, "final_size": len(tokenizer),
            "pad_token": tokenizer.pad_token, "special_added": special_added,
            "before": before, "after": chars_per_token(encode, texts), "added_sample": new[:20]}


def merge_tokenizer(base: str | Path, add: str | Path, output: str | Path,
                    report_text: str | Path | None = None) -> dict:
    """Merge `add` (.model) into `base` (.model or HF tokenizer dir), write `output` and its merge_report.json."""
    base, add = Path(base), Path(add)
    add_proto = read_proto(add)
    texts = texts_from_file(report_text) if report_text else []
    if not base.exists():
        raise TokenizerError(f"{base}: no such file or directory")
    with new_output_dir(output) as out:
        if base.is_file():
            fields = merge_sentencepiece(read_proto(base), add_proto, None, out, texts, add)
        elif (base / SP_MODEL).is_file():
            fields = merge_sentencepiece(read_proto(base / SP_MODEL), add_proto, base, out, texts, add)
        elif (base / "tokenizer.json").is_file():
            fields = merge_hf(base, add_proto, out, texts)
        else:
            raise TokenizerError(f"{base}: neither a SentencePiece .model file nor an HF tokenizer dir "
                                 "(tokenizer.model or tokenizer.json)")
        report = {"base": str(base), "add": str(add), "output": str(output),
                  "report_text": str(report_text) if report_text else None, **fields}
        (out / REPORT).write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return report


def report_lines(report: dict) -> list[str]:
    """The merge report as a few readable lines."""
    lines = [f"base {report['base']}: {report['base_size']} tokens ({report['kind']})",
             f"added {report['added']} pieces from {report['add']} (skipped {report['skipped_existing']} already "
             f"in the base, dropped {report['dropped_unreachable']} unreachable) -> {report['final_size']} tokens"]
    if report["before"] and report["after"]:
        lines.append(f"characters per token on {report['report_text']}: {report['before']['chars_per_token']} "
                     f"before, {report['after']['chars_per_token']} after "
                     f"({report['before']['tokens']} -> {report['after']['tokens']} tokens)")
    if report.get("sentencepiece_mismatches"):
        lines.append(f"warning: tokenizer.model and tokenizer.json encode {report['sentencepiece_mismatches']} "
                     "of these texts differently")
    lines.append(f"pad token {report['pad_token']!r}")
    lines.append(f"wrote {report['output']} (HF tokenizer + {REPORT})")
    return lines
