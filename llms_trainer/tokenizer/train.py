"""Train a Llama-compatible SentencePiece model on text from shards or jsonl files.

Sources: a source directory of shards (holds manifest.json), a directory of such source directories, a
directory of *.jsonl files, or a glob of *.jsonl.zst shards / *.jsonl files. Each record becomes text through
`pretrain_text` (or the joined contents of `chat_turns` for SFT records); records with neither are skipped.
Documents are split into lines (SentencePiece trains on sentences); very long lines are cut into chunks.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from llms_trainer.data.records import UnusableJSON, chat_turns, load_json_line, pretrain_text
from llms_trainer.data.shards import MANIFEST, ShardError, iter_records, list_shards
from llms_trainer.io import atomic_write
from llms_trainer.tokenizer import TokenizerError

MODEL_TYPES = ("bpe", "unigram")
MAX_LINE_CHARS = 2000  # a line longer than this is cut; 4-byte characters keep it under max_sentence_length
MAX_SENTENCE_BYTES = 4 * MAX_LINE_CHARS
SEED = 42
# Llama-compatible trainer settings: no normalisation, bytes for unseen characters, digits one by one,
# whitespace kept as pieces, unk/bos/eos at 0/1/2 and no pad piece.
LLAMA_SETTINGS = dict(
    normalization_rule_name="identity", byte_fallback=True, split_digits=True, remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True, add_dummy_prefix=True, split_by_unicode_script=True,
    unk_id=0, bos_id=1, eos_id=2, pad_id=-1, max_sentencepiece_length=16, hard_vocab_limit=False,
    max_sentence_length=MAX_SENTENCE_BYTES, num_threads=1, minloglevel=2,
)


@dataclass
class Source:
    """One corpus unit that --max-docs-per-source caps: a shard directory or a jsonl file."""

    name: str
    shard_paths: str | None = None  # a source dir or shard glob for list_shards
    jsonl_path: Path | None = None


@dataclass
class CorpusStats:
    """What was read: documents used and skipped per source, and sentences produced."""

    docs: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    sentences: int = 0


def record_text(record: object) -> str | None:
    """Training text of a pretraining or SFT record, or None when it carries neither."""
    if not isinstance(record, dict):
        return None
    text = pretrain_text(record)
    if text is None and (turns := chat_turns(record)):
        text = "\n".join(t["content"] for t in turns)
    return text


def iter_jsonl_records(path: Path) -> Iterator[object]:
    """Parsed JSON values of a jsonl file; an error names FILE:LINE when a line is not JSON."""
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield load_json_line(line)
                except json.JSONDecodeError as err:
                    raise TokenizerError(f"{path}:{number}: not valid JSON ({err.msg}); fix or remove the line") from err
                except UnusableJSON as err:
                    raise TokenizerError(f"{path}:{number}: {err}; fix or remove the line") from err
    except (OSError, UnicodeDecodeError) as err:
        raise TokenizerError(f"{path}: cannot read ({err})") from err


def texts_from_file(path: str | Path) -> list[str]:
    """Texts of a held-out file: record texts for *.jsonl, non-empty lines for anything else."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        return [t for t in map(record_text, iter_jsonl_records(path)) if t]
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise TokenizerError(f"{path}: cannot read as UTF-8 text ({err})") from err


def resolve_sources(spec: str) -> list[Source]:
    """The sources named by one --data argument (see module docstring)."""
    path = Path(spec)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return [Source(path.name, shard_paths=str(path))]
        subdirs = sorted(p for p in path.iterdir() if (p / MANIFEST).is_file())
        if subdirs:
            return [Source(p.name, shard_paths=str(p)) for p in subdirs]
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise TokenizerError(f"{spec}: no shards (manifest.json) and no *.jsonl files in this directory")
        return [Source(f.stem, jsonl_path=f) for f in files]
    matched = sorted(glob(spec))
    if not matched:
        raise TokenizerError(f"{spec}: matches no file or directory")
    sources = [Source(Path(p).stem, jsonl_path=Path(p)) for p in matched if p.endswith(".jsonl")]
    shard_dirs = sorted({str(Path(p).parent) for p in matched if p.endswith(".jsonl.zst")})
    sources += [Source(Path(d).name, shard_paths=os.path.join(d, Path(spec).name)) for d in shard_dirs]
    other = [p for p in matched if not p.endswith((".jsonl", ".jsonl.zst"))]
    if other:
        raise TokenizerError(f"{other[0]}: not a .jsonl or .jsonl.zst file (matched by {spec})")
    return sources


def iter_source_texts(source: Source) -> Iterator[str | None]:
    """Record texts of one source in order (None for a record without text)."""
    if source.jsonl_path is not None:
        if not source.jsonl_path.is_file():
            raise TokenizerError(f"{source.jsonl_path}: no such file")
        records = iter_jsonl_records(source.jsonl_path)
    else:
        try:
            records = iter_records(list_shards(source.shard_paths))
        except ShardError as err:
            raise TokenizerError(str(err)) from err
    try:
        yield from map(record_text, records)
    except ShardError as err:
        raise TokenizerError(str(err)) from err


def split_sentences(text: str) -> Iterator[str]:
    """Non-blank lines of a document, long ones cut into MAX_LINE_CHARS chunks."""
    for line in text.splitlines():
        if line.strip():
            for start in range(0, len(line), MAX_LINE_CHARS):
                yield line[start:start + MAX_LINE_CHARS]


def collect_sentences(data: list[str], max_docs_per_source: int | None = None) -> tuple[list[str], CorpusStats]:
    """Training sentences from every --data argument; the first N documents per source in shard order."""
    stats, sentences = CorpusStats(), []
    for spec in data:
        for source in resolve_sources(spec):
            name = source.name if source.name not in stats.docs else f"{source.name}@{spec}"
            stats.docs[name], stats.skipped[name] = 0, 0
            for text in iter_source_texts(source):
                if max_docs_per_source is not None and stats.docs[name] >= max_docs_per_source:
                    break
                if text is None:
                    stats.skipped[name] += 1
                    continue
                stats.docs[name] += 1
                sentences.extend(split_sentences(text))
    stats.sentences = len(sentences)
    if not sentences:
        raise TokenizerError(f"no training text in {', '.join(data)} (records need a text field or chat turns)")
    return sentences, stats


def train_model(sentences: list[str], vocab_size: int, model_type: str = "bpe",
                user_symbols: tuple[str, ...] = (), character_coverage: float = 0.9995) -> bytes:
    """A serialized SentencePiece model trained with LLAMA_SETTINGS; the same input gives the same bytes."""
    if model_type not in MODEL_TYPES:
        raise TokenizerError(f"--model-type {model_type!r}: use one of {', '.join(MODEL_TYPES)}")
    if not 0 < character_coverage <= 1:
        raise TokenizerError(f"--character-coverage {character_coverage}: must be in (0, 1]")
    blank = [s for s in user_symbols if not s.strip()]
    if blank:
        raise TokenizerError(f"--user-symbols: empty or whitespace-only symbol {blank[0]!r}")
    spm.set_random_generator_seed(SEED)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, user_defined_symbols=list(user_symbols), **LLAMA_SETTINGS)
    except RuntimeError as err:
        raise TokenizerError(_explain_training_error(str(err), vocab_size)) from err
    return model.getvalue()


def _explain_training_error(message: str, vocab_size: int) -> str:
    too_small = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if too_small:
        return (f"--vocab-size {vocab_size} is smaller than the alphabet: this corpus needs at least "
                f"{too_small.group(2)} pieces (its characters + 256 byte pieces + unk/bos/eos + user symbols); "
                "raise --vocab-size or lower --character-coverage")
    too_big = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message)
    if too_big:
        return (f"--vocab-size {vocab_size} is more than this corpus supports for unigram; use at most "
                f"{too_big.group(2)} or add data")
    return f"sentencepiece training failed: {message.strip().splitlines()[-1]}"


def vocab_lines(model_bytes: bytes) -> list[str]:
    """`piece<TAB>score` lines, as in the .vocab file spm_train writes."""
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    return [f"{p.piece}\t{p.score:g}" for p in proto.pieces]


def output_paths(prefix: str | Path) -> tuple[Path, Path]:
    """(PREFIX.model, PREFIX.vocab); an error when either exists already."""
    prefix = Path(prefix)
    targets = (prefix.with_name(prefix.name + ".model"), prefix.with_name(prefix.name + ".vocab"))
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise TokenizerError(f"{existing[0]} already exists; choose another --output or delete it")
    return targets


def save_model(model_bytes: bytes, prefix: str | Path) -> tuple[Path, Path]:
    """Write PREFIX.model and PREFIX.vocab; refuses to overwrite; nothing half-written on failure."""
    targets = output_paths(Path(prefix))
    atomic_write(targets[0], model_bytes)
    atomic_write(targets[1], "\n".join(vocab_lines(model_bytes)) + "\n")
    return targets


def sample_encoding(model_bytes: bytes, text: str) -> tuple[list[str], str]:
    """(pieces, decoded text) of `text` under a trained model, to show what it learnt."""
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    return sp.encode(text, out_type=str), sp.decode(sp.encode(text))
