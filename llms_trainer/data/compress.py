"""jsonl files → validated, sharded `.jsonl.zst` sources (the logic behind data/compress_data.py)."""

from __future__ import annotations

import glob
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .records import MODES, record_problem
from .shards import commit_source, dump_record, stage_source

BAD_LINE_POLICIES = ("error", "skip")


class BadLineError(ValueError):
    """An input line that is not a usable record (message: FILE:LINE: reason)."""


@dataclass
class SourceInput:
    name: str
    files: list[Path]


def expand_inputs(patterns: list[str], name: str | None) -> list[SourceInput]:
    """Files named by paths or globs; one source per file stem, or all in one source called `name`."""
    files: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matched:
            raise FileNotFoundError(f"{pattern}: no input files match")
        for path in map(Path, matched):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: input file not found")
            files.append(path)
    if name:
        return [SourceInput(name, files)]
    sources: dict[str, list[Path]] = {}
    for path in files:
        stem = path.name.split(".")[0]
        sources.setdefault(stem, []).append(path)
    return [SourceInput(n, f) for n, f in sources.items()]


def validated_lines(files: list[Path], mode: str, on_bad_line: str, counter: dict) -> Iterator[str]:
    """Each input line re-serialised as a compact UTF-8 record; bad lines raise or are counted."""
    for path in files:
        with open(path, encoding="utf-8", errors="strict") as fh, \
                tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, leave=False) as bar:
            number = 0
            while True:
                try:
                    line = fh.readline()
                except UnicodeDecodeError as err:
                    raise BadLineError(f"{path}:{number + 1}: not UTF-8 text ({err.reason})") from err
                if not line:
                    break
                number += 1
                bar.update(len(line.encode("utf-8")))
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    problem = record_problem(record, mode)
                except json.JSONDecodeError as err:
                    problem = f"not JSON ({err.msg} at column {err.colno})"
                if problem is None:
                    yield dump_record(record)
                elif on_bad_line == "skip":
                    counter["bad_lines"] += 1
                else:
                    raise BadLineError(f"{path}:{number}: {problem}. Fix the line or pass --on-bad-line skip")


def compress_sources(
    sources: list[SourceInput],
    output: str | Path,
    *,
    mode: str = "pretrain",
    on_bad_line: str = "error",
    shard_records: int | None = None,
    shard_mb: float | None = None,
) -> list[dict]:
    """Compress every source; all-or-nothing: on any error no source in `output` is changed."""
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {sorted(MODES)}, got {mode!r}")
    if on_bad_line not in BAD_LINE_POLICIES:
        raise ValueError(f"--on-bad-line must be one of {BAD_LINE_POLICIES}, got {on_bad_line!r}")
    shard_bytes = int(shard_mb * (1 << 20)) if shard_mb else (None if shard_records else 32 << 20)
    staged: list[tuple[Path, dict]] = []
    try:
        for source in sources:
            counter = {"bad_lines": 0}
            lines = validated_lines(source.files, mode, on_bad_line, counter)
            staged.append(stage_source(lines, output, source.name, shard_records=shard_records,
                                       shard_bytes=shard_bytes, bad_lines=lambda c=counter: c["bad_lines"]))
    except BaseException:
        for tmp, _ in staged:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    for tmp, manifest in staged:
        commit_source(tmp, output, manifest["source"])
    return [manifest for _, manifest in staged]


def summary_lines(manifests: list[dict], output: str | Path) -> list[str]:
    """A table row per source: records, shards, raw MB, zst MB, ratio, skipped lines."""
    rows = [f"{'source':<20} {'records':>9} {'shards':>6} {'raw MB':>9} {'zst MB':>9} {'ratio':>6} {'bad':>5}"]
    for m in manifests:
        ratio = m["raw_bytes"] / max(1, m["zst_bytes"])
        rows.append(f"{m['source']:<20} {m['records']:>9} {len(m['shards']):>6} {m['raw_bytes'] / 2**20:>9.3f} "
                    f"{m['zst_bytes'] / 2**20:>9.3f} {ratio:>6.2f} {m['bad_lines']:>5}")
    rows.append(f"wrote {len(manifests)} source(s) under {output}")
    return rows
