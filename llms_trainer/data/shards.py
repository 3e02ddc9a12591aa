"""Shards on disk: write a source's shards + manifest atomically, list them, read one verified.

Layout::

    <out>/<source>/part-00001.jsonl.zst ...  one zstd frame per shard, content checksum on
    <out>/<source>/manifest.json              {"source", "format_version", "shards": [...], totals, "bad_lines"}
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

from ..io import make_temp_dir, replace_dir
from .records import UnusableJSON, load_json_line

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_PATTERN = "part-{:05d}.jsonl.zst"
_READ_CHUNK_BYTES = 1 << 20


class ShardError(RuntimeError):
    """A shard or manifest is missing, corrupt or does not match its manifest."""


class SourceNameError(ValueError):
    """A source name that is not a plain directory name."""


_SOURCE_NAME = re.compile(r"[\w.-]+")  # \w: letters, digits and _ of any script


def dataset_files(value: str | list[str] | dict[str, str] | None) -> list[str]:
    """The entries of a dataset key (a path or glob, a list of them, or {name: path} as in the old configs)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value.values()) if isinstance(value, dict) else list(value)


def check_source_name(name: str) -> str:
    """`name` when it is a plain name (letters, digits, `_ - .`, not starting with a dot); else SourceNameError.

    A source is the directory `<out>/<name>`: a name holding `/`, `..` or `.` would write outside `<out>` or
    replace `<out>` itself, and names starting with a dot are hidden from readers (temporaries use them).
    """
    if not isinstance(name, str) or not _SOURCE_NAME.fullmatch(name) or name.startswith("."):
        raise SourceNameError(
            f"source name {name!r} is not a plain name: use letters, digits, _ - . "
            "(not starting with a dot), e.g. news_en"
        )
    return name


@dataclass(frozen=True)
class ShardInfo:
    """One shard as its manifest describes it."""

    path: Path
    records: int
    raw_bytes: int
    zst_bytes: int
    sha256: str


def dump_record(record: dict) -> str:
    """One record as a JSON line body: UTF-8 text kept literal (no \\u escapes)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


class _ShardWriter:
    """Accumulates lines into shards of at most `shard_records` records or `shard_bytes` raw bytes."""

    def __init__(self, directory: Path, shard_records: int | None, shard_bytes: int | None, level: int):
        self.directory = directory
        self.shard_records = shard_records
        self.shard_bytes = shard_bytes
        self.compressor = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
        self.shards: list[dict] = []
        self._lines: list[bytes] = []
        self._size = 0

    def add(self, line: str) -> None:
        data = line.encode("utf-8") + b"\n"
        if self._lines and self._is_full(len(data)):
            self.flush()
        self._lines.append(data)
        self._size += len(data)

    def _is_full(self, incoming: int) -> bool:
        if self.shard_records is not None and len(self._lines) >= self.shard_records:
            return True
        return self.shard_bytes is not None and self._size + incoming > self.shard_bytes

    def flush(self) -> None:
        if not self._lines:
            return
        raw = b"".join(self._lines)
        packed = self.compressor.compress(raw)
        name = SHARD_PATTERN.format(len(self.shards) + 1)
        (self.directory / name).write_bytes(packed)
        self.shards.append(
            {
                "file": name,
                "records": len(self._lines),
                "raw_bytes": len(raw),
                "zst_bytes": len(packed),
                "sha256": hashlib.sha256(packed).hexdigest(),
            }
        )
        self._lines, self._size = [], 0


def stage_source(
    lines: Iterable[str],
    out_dir: str | Path,
    source: str,
    *,
    shard_records: int | None = None,
    shard_bytes: int | None = 32 << 20,
    bad_lines: int | Callable[[], int] = 0,
    level: int = 10,
) -> tuple[Path, dict]:
    """Write JSON lines as shards + manifest into a hidden temporary directory inside `out_dir`.

    Nothing visible changes until `commit_source`; an error raised by `lines` removes the temporary
    directory. `bad_lines` (a count, or a callable read after `lines` is exhausted) goes into the manifest.
    Returns (temporary directory, manifest).
    """
    check_source_name(source)
    tmp = make_temp_dir(out_dir, f".{source}.tmp-")
    try:
        writer = _ShardWriter(tmp, shard_records, shard_bytes, level)
        for line in lines:
            writer.add(line)
        writer.flush()
        manifest = {
            "source": source,
            "format_version": FORMAT_VERSION,
            "shards": writer.shards,
            "records": sum(s["records"] for s in writer.shards),
            "raw_bytes": sum(s["raw_bytes"] for s in writer.shards),
            "zst_bytes": sum(s["zst_bytes"] for s in writer.shards),
            "bad_lines": bad_lines() if callable(bad_lines) else bad_lines,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return tmp, manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commit_source(staged: Path, out_dir: str | Path, source: str) -> Path:
    """Move a staged source into `<out_dir>/<source>`, replacing the old one with renames."""
    final = Path(out_dir) / check_source_name(source)
    replace_dir(staged, final)
    return final


def write_source(lines: Iterable[str], out_dir: str | Path, source: str, **options) -> dict:
    """Stage and commit one source (see `stage_source`); returns its manifest."""
    staged, manifest = stage_source(lines, out_dir, source, **options)
    commit_source(staged, out_dir, source)
    return manifest


def read_manifest(source_dir: str | Path) -> dict:
    """The manifest of one source directory; a clear error when missing or unreadable."""
    path = Path(source_dir) / MANIFEST
    if not path.is_file():
        raise ShardError(
            f"{path}: no manifest. Shards must be written by data/compress_data.py "
            f"(python data/compress_data.py --input FILE --output {Path(source_dir).parent})."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ShardError(f"{path}: unreadable manifest ({err}); re-run data/compress_data.py") from err
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION \
            or not isinstance(manifest.get("shards"), list):
        raise ShardError(f"{path}: not a format_version {FORMAT_VERSION} manifest; re-run data/compress_data.py")
    return manifest


def list_shards(pattern: str | Path) -> list[ShardInfo]:
    """Shards matching a source directory or a glob of shard files, in manifest order.

    Every matched shard must be listed in its directory's manifest.
    """
    pattern = str(pattern)
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "*.jsonl.zst")
    matched = sorted(Path(p) for p in glob.glob(pattern))
    if not matched:
        raise ShardError(f"{pattern}: no shards match. Run data/compress_data.py first or fix the path.")
    wanted = {p.resolve() for p in matched}
    shards: list[ShardInfo] = []
    for directory in sorted({p.parent for p in matched}):
        manifest = read_manifest(directory)
        listed = {directory.joinpath(s["file"]).resolve(): s for s in manifest["shards"]}
        unknown = sorted(str(p) for p in wanted if p.parent == directory.resolve() and p not in listed)
        if unknown:
            raise ShardError(f"{unknown[0]}: not listed in {directory / MANIFEST}; re-run data/compress_data.py")
        for s in manifest["shards"]:
            path = directory / s["file"]
            if path.resolve() in wanted:
                shards.append(ShardInfo(path, s["records"], s["raw_bytes"], s["zst_bytes"], s["sha256"]))
    return shards


_verified: set[tuple[str, str]] = set()


def verify_shard(shard: ShardInfo) -> None:
    """Check size, sha256, raw bytes and record count against the manifest (once per process per shard).

    The size and hash catch a changed or truncated file; the decompressed size and line count catch a
    manifest that was edited or belongs to other shards (streaming relies on the record counts).
    """
    key = (str(shard.path.resolve()), shard.sha256, shard.records, shard.raw_bytes)
    if key in _verified:
        return
    try:
        size = shard.path.stat().st_size
        digest = hashlib.sha256()
        with open(shard.path, "rb") as fh:
            while chunk := fh.read(_READ_CHUNK_BYTES):
                digest.update(chunk)
    except OSError as err:
        raise ShardError(f"{shard.path}: cannot read shard ({err})") from err
    if size != shard.zst_bytes:
        raise ShardError(
            f"{shard.path}: truncated or altered shard ({size} bytes, manifest says {shard.zst_bytes}); "
            "re-run data/compress_data.py"
        )
    if digest.hexdigest() != shard.sha256:
        raise ShardError(f"{shard.path}: corrupt shard (sha256 does not match manifest); re-run data/compress_data.py")
    raw_bytes, records = _count_records(shard.path)
    if (records, raw_bytes) != (shard.records, shard.raw_bytes):
        raise ShardError(
            f"{shard.path}: the shard holds {records} records and {raw_bytes} raw bytes, its manifest says "
            f"{shard.records} and {shard.raw_bytes}; the manifest was edited or belongs to other shards: "
            "re-run data/compress_data.py"
        )
    _verified.add(key)


def _count_records(path: Path) -> tuple[int, int]:
    """(raw bytes, lines) of a shard's decompressed text, streamed in 1 MiB blocks."""
    raw_bytes = newlines = 0
    last = b"\n"
    try:
        with open(path, "rb") as fh, \
                zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True) as raw:
            while block := raw.read(_READ_CHUNK_BYTES):
                raw_bytes += len(block)
                newlines += block.count(b"\n")
                last = block[-1:]
    except (OSError, zstandard.ZstdError) as err:
        raise ShardError(f"{path}: corrupt zstd frame ({err}); re-run data/compress_data.py") from err
    return raw_bytes, newlines + (last != b"\n")


def iter_shard_lines(shard: ShardInfo, skip: int = 0) -> Iterator[str]:
    """Lines of one verified shard, streamed in 1 MiB blocks (constant memory).

    The first `skip` lines are passed over by counting newlines in decompressed blocks, without
    decoding or parsing them, so resuming deep inside a shard costs little more than decompression.
    """
    verify_shard(shard)
    decompressor = zstandard.ZstdDecompressor()
    try:
        with open(shard.path, "rb") as fh, decompressor.stream_reader(fh, read_across_frames=True) as raw:
            tail = b""
            while block := raw.read(_READ_CHUNK_BYTES):
                if skip:
                    block, skip = _drop_lines(block, skip)
                    if skip:
                        continue
                lines = (tail + block).split(b"\n")
                tail = lines.pop()
                for line in lines:
                    yield line.decode("utf-8")
            if tail:
                yield tail.decode("utf-8")
    except (zstandard.ZstdError, UnicodeDecodeError) as err:
        raise ShardError(f"{shard.path}: corrupt zstd frame or text ({err}); re-run data/compress_data.py") from err


def _drop_lines(block: bytes, count: int) -> tuple[bytes, int]:
    """Remove up to `count` whole lines from the front of `block`; returns (rest, lines still to drop)."""
    newlines = block.count(b"\n")
    if newlines < count:
        return b"", count - newlines
    cut = -1
    for _ in range(count):
        cut = block.index(b"\n", cut + 1)
    return block[cut + 1:], 0


def iter_records(shards: Iterable[ShardInfo]) -> Iterator[dict]:
    """Every usable record of the given shards in order (used by tools that read a whole source); records no
    reader may use (`records.UnusableJSON`) are left out, as records without text are."""
    for shard in shards:
        for number, line in enumerate(iter_shard_lines(shard), 1):
            record = parse_shard_line(line, shard.path, number)
            if isinstance(record, dict):
                yield record


def parse_shard_line(line: str, path: Path, number: int) -> dict | str:
    """One shard line as a record, or why no reader may use it (too deep, a lone surrogate: a bad record);
    a ShardError naming the shard and line when it is not a JSON object at all (a damaged shard)."""
    try:
        record = load_json_line(line)
    except json.JSONDecodeError as err:
        raise ShardError(f"{path}:{number}: not JSON inside a shard ({err}); re-run data/compress_data.py") from err
    except UnusableJSON as err:
        return str(err)
    if not isinstance(record, dict):
        raise ShardError(f"{path}:{number}: not a JSON object inside a shard; re-run data/compress_data.py")
    return record
