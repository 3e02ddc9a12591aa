"""Sources for the sampler viewer: read a data directory or pasted sizes, count and cache tokens.

A *source* is `<data_dir>/<source>/manifest.json` (shards from data/compress_data.py) or `<data_dir>/<source>*.jsonl`
(raw samples), or a size pasted in the old `{name: size}` / two-line CSV form. Every user mistake raises
`ViewerError` with a message the page shows inline.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..data.records import load_json_line, pretrain_text
from ..data.shards import MANIFEST, ShardError, iter_records, list_shards, read_manifest
from ..io import atomic_write

MB = 2**20
TOKEN_CACHE = "token_counts.json"
TOKENS, RAW_BYTES = "tokens", "raw bytes"
_TOKENIZE_BATCH_DOCS = 256


class ViewerError(ValueError):
    """A problem with the user's input or data, worded for the page."""


@dataclass
class Source:
    """One data source as the viewer shows it (kind: "shards", "jsonl" or "pasted")."""

    name: str
    kind: str
    raw_bytes: int
    zst_bytes: int | None = None
    records: int | None = None
    bad_lines: int | None = None
    tokens: int | None = None
    path: Path | None = None  # source dir (shards) or data dir (jsonl)
    files: tuple[Path, ...] = ()  # jsonl files of the source


# ---------------------------------------------------------------- reading a data directory


def scan_data_dir(data_dir: str | Path, tokenizer_key: str | None = None) -> tuple[list[Source], list[str]]:
    """Sources under `data_dir` (+ cached token counts for `tokenizer_key`), and warnings about skipped ones."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ViewerError(f"{data_dir}: no such directory. Run `python data/compress_data.py` to make "
                          "data/pretrain_data, or choose data/shuffled_data/pretrain (raw jsonl).")
    try:
        entries = sorted(p for p in data_dir.iterdir() if not p.name.startswith("."))
    except OSError as err:
        raise ViewerError(f"{data_dir}: cannot read the directory ({err})") from err
    sources, warnings = [], []
    for entry in entries:
        if entry.is_dir() and (entry / MANIFEST).exists():
            try:
                sources.append(_shard_source(entry))
            except ShardError as err:
                warnings.append(f"skipped {entry.name}: {err}")
        elif entry.is_dir() and any(entry.glob("*.jsonl.zst")):
            warnings.append(f"skipped {entry.name}: shards without {MANIFEST}; re-run data/compress_data.py")
    by_stem: dict[str, list[Path]] = {}
    for path in entries:
        if path.is_file() and path.name.endswith(".jsonl"):
            by_stem.setdefault(path.name.split(".")[0], []).append(path)
    for name, files in by_stem.items():
        try:
            sources.append(_jsonl_source(name, data_dir, files))
        except OSError as err:
            warnings.append(f"skipped {name}: cannot read ({err})")
    if not sources:
        raise ViewerError(f"{data_dir}: no sources found. Expected <source>/{MANIFEST} written by "
                          "data/compress_data.py, or <source>.jsonl files." + "".join(f" {w}." for w in warnings))
    if tokenizer_key:
        for source in sources:
            source.tokens = cached_tokens(source, tokenizer_key)
    return sources, warnings


def _shard_source(source_dir: Path) -> Source:
    try:
        manifest = read_manifest(source_dir)
        return Source(source_dir.name, "shards", int(manifest["raw_bytes"]), int(manifest["zst_bytes"]),
                      int(manifest["records"]), int(manifest.get("bad_lines", 0)), path=source_dir)
    except (AttributeError, KeyError, TypeError, ValueError) as err:  # e.g. a manifest that is not a JSON object
        raise ShardError(f"{source_dir / MANIFEST}: unreadable manifest or bad totals ({err}); "
                         "re-run data/compress_data.py") from err


def _jsonl_source(name: str, data_dir: Path, files: list[Path]) -> Source:
    stats = [f.stat() for f in files]
    records = sum(_count_lines(str(f), s.st_size, s.st_mtime_ns) for f, s in zip(files, stats, strict=True))
    return Source(name, "jsonl", sum(s.st_size for s in stats), records=records, path=data_dir, files=tuple(files))


@lru_cache(maxsize=256)
def _count_lines(path: str, size: int, mtime_ns: int) -> int:
    """Non-blank lines of a file (cached by size and mtime, so page reruns do not re-read it)."""
    count = 0
    with open(path, "rb") as fh:
        for line in fh:
            count += bool(line.strip())
    return count


# ---------------------------------------------------------------- pasted sizes (old viewer input)

_SIZE = re.compile(r"^([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)
_UNIT = {"": MB, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str) -> int:
    """Bytes of a size like `253K`, `1.5 MB`, `2G` (ls -lh style, powers of 1024); a bare number is MB."""
    match = _SIZE.match(text.strip().strip("'\""))
    if not match:
        raise ViewerError(f"size {text.strip()!r} is not a number with an optional K/M/G/T unit (e.g. 253K)")
    unit = match.group(2).lower()
    if match.group(2) == "" and text.strip().lower().endswith("b"):
        unit = "b"
    return int(float(match.group(1)) * _UNIT.get(unit, 1))


def parse_pasted_sizes(text: str) -> list[Source]:
    """Sources from `{name: size, ...}` or two CSV lines (names, then sizes). Never evaluated as code."""
    text = text.strip()
    if not text:
        raise ViewerError("nothing pasted: use {name: size, ...} or two lines (names, then sizes)")
    if text.startswith("{"):
        if not text.endswith("}"):
            raise ViewerError("pasted sizes start with '{' but do not end with '}'")
        pairs = []
        for number, item in enumerate(re.split(r"[,\n]", text[1:-1]), 1):
            if not item.strip():
                continue
            name, sep, size = item.partition(":")
            if not sep:
                raise ViewerError(f"item {number} ({item.strip()!r}) is not `name: size`")
            pairs.append((name, size))
    else:
        lines = [row for row in csv.reader(line for line in text.splitlines() if line.strip())]
        if len(lines) != 2 or len(lines[0]) != len(lines[1]):
            raise ViewerError("CSV form needs exactly two lines with the same number of fields: names, then sizes")
        pairs = list(zip(*lines, strict=True))
    sources: dict[str, Source] = {}
    for name, size in pairs:
        name = name.strip().strip("'\"").strip()
        if not name:
            raise ViewerError(f"a pasted size ({size.strip()!r}) has no source name")
        if name in sources:
            raise ViewerError(f"source {name!r} is pasted twice")
        sources[name] = Source(name, "pasted", parse_size(size))
    return list(sources.values())


# ---------------------------------------------------------------- token counts (cached beside the manifest)


def _cache_path(source: Source) -> Path:
    if source.kind == "shards":
        return source.path / TOKEN_CACHE
    return source.path / f"{source.name}.{TOKEN_CACHE}"


def _fingerprint(source: Source) -> dict[str, str]:
    """What a cached count depends on: the manifest's sha256 (shards) or the files' sizes and mtimes (jsonl)."""
    if source.kind == "shards":
        return {"manifest_sha": hashlib.sha256((source.path / MANIFEST).read_bytes()).hexdigest()}
    stamp = "\n".join(f"{f.name} {f.stat().st_size} {f.stat().st_mtime_ns}" for f in source.files)
    return {"files_sha": hashlib.sha256(stamp.encode()).hexdigest()}


def _read_cache(source: Source) -> dict:
    try:
        cache = json.loads(_cache_path(source).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def cached_tokens(source: Source, tokenizer_key: str) -> int | None:
    """The cached token count of a source for a tokenizer, or None when absent or stale."""
    if source.kind == "pasted":
        return None
    entry = _read_cache(source).get(tokenizer_key)
    try:
        fresh = isinstance(entry, dict) and all(entry.get(k) == v for k, v in _fingerprint(source).items())
    except OSError:
        return None
    return int(entry["tokens"]) if fresh and isinstance(entry.get("tokens"), int) else None


def load_tokenizer(tokenizer_dir: str | Path):
    """An HF tokenizer from a local directory; ViewerError when it cannot be loaded."""
    if not Path(tokenizer_dir).is_dir():
        raise ViewerError(f"{tokenizer_dir}: not a tokenizer directory (expected tokenizer.json / tokenizer.model)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception as err:  # noqa: BLE001 - any loader failure is a bad directory for the user
        raise ViewerError(f"{tokenizer_dir}: cannot load a tokenizer ({type(err).__name__}: {err})") from err


def _texts(source: Source) -> Iterator[str]:
    if source.kind == "shards":
        records: Iterator[dict] = iter_records(list_shards(source.path))
    else:
        records = (r for f in source.files for r in _jsonl_records(f))
    for record in records:
        text = pretrain_text(record)
        if text is not None:
            yield text


def _jsonl_records(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                record = load_json_line(line)
            except ValueError:  # json.JSONDecodeError, UnusableJSON
                continue  # blank or bad lines carry no tokens; compress_data.py reports them
            if isinstance(record, dict):
                yield record


def count_tokens(source: Source, tokenizer, tokenizer_key: str,
                 progress: Callable[[float], None] | None = None) -> int:
    """Tokens of a source as the trainer counts them (BOS + text + EOS per document); cached atomically."""
    from ..data.pipeline import make_encoder

    encode = make_encoder(tokenizer)
    tokens = docs = 0
    batch: list[str] = []
    try:
        for text in _texts(source):
            batch.append(text)
            if len(batch) == _TOKENIZE_BATCH_DOCS:
                tokens, docs = tokens + sum(map(len, encode(batch))), docs + len(batch)
                batch = []
                if progress and source.records:
                    progress(min(1.0, docs / source.records))
        if batch:
            tokens, docs = tokens + sum(map(len, encode(batch))), docs + len(batch)
        fingerprint = _fingerprint(source)
    except (ShardError, OSError) as err:
        raise ViewerError(f"{source.name}: cannot read its data ({err})") from err
    cache = {k: v for k, v in _read_cache(source).items() if k != tokenizer_key}
    cache[tokenizer_key] = {"tokens": tokens, "records": docs, **fingerprint}
    atomic_write(_cache_path(source), json.dumps(cache, indent=1) + "\n")
    if progress:
        progress(1.0)
    source.tokens = tokens
    return tokens
