"""jsonl files → validated, sharded `.jsonl.zst` sources (the logic behind data/compress_data.py)."""

from __future__ import annotations

import glob
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .records import MODES, parse_json_line, record_problem
from .shards import SourceNameError, check_source_name, commit_source, dump_record, stage_source

BAD_LINE_POLICIES = ("error", "skip")


class BadLineError(ValueError):
    """An input line that is not a usable record (message: FILE:LINE: reason)."""


class EmptySourceError(ValueError):
    """A source whose inputs hold no records (an empty file, only blank or skipped lines)."""


@dataclass
class SourceInput:
    name: str
    files: list[Path]


def expand_inputs(patterns: list[str], name: str | None) -> list[SourceInput]:
    """Files named by paths or globs; one source per file stem, or all in one source called `name`.

    Source names must be plain names (`check_source_name`): a stem that is not one asks for `--name`.
    """
    files: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matched:
            raise FileNotFoundError(f"{pattern}: no input files match")
        for path in map(Path, matched):
            if path.is_dir():
                raise IsADirectoryError(f"{path}: is a directory, not a jsonl file; give its files, "
                                        f"e.g. --input '{path / '*.jsonl'}'")
            if not path.is_file():
                raise FileNotFoundError(f"{path}: input file not found")
            files.append(path)
    if name is not None:
        return [SourceInput(check_source_name(name), files)]
    sources: dict[str, list[Path]] = {}
    for path in files:
        stem = path.name.split(".")[0]
        try:
            check_source_name(stem)
        except SourceNameError as err:
            raise SourceNameError(f"{path}: its name gives no usable source name ({err}); pass --name") from None
        sources.setdefault(stem, []).append(path)
    return [SourceInput(n, f) for n, f in sources.items()]


def validated_lines(files: list[Path], mode: str, on_bad_line: str, counter: dict) -> Iterator[str]:
    """Each input line re-serialised as a compact UTF-8 record; bad lines raise or are counted.

    Lines are split on newline bytes and decoded one by one, so a byte that is not UTF-8 is reported on
    (and, under `skip`, costs only) its own line.
    """
    for path in files:
        with open(path, "rb") as fh, \
                tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, leave=False,
                     disable=None) as bar:  # no bar when stderr is not a terminal (logs, CI)
            for number, raw in enumerate(fh, 1):
                bar.update(len(raw))
                record, problem = parse_input_line(raw, mode, first_line=number == 1)
                if record is not None:
                    yield dump_record(record)
                elif problem is None:
                    continue  # blank line
                elif on_bad_line == "skip":
                    counter["bad_lines"] += 1
                else:
                    raise BadLineError(f"{path}:{number}: {problem}. Fix the line or pass --on-bad-line skip")


def parse_input_line(raw: bytes, mode: str, first_line: bool = False) -> tuple[dict | None, str | None]:
    """(record, None) for a usable line, (None, problem) for a bad one, (None, None) for a blank one."""
    try:
        text = raw.decode("utf-8-sig" if first_line else "utf-8")  # a BOM may start a file
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 text (byte 0x{err.object[err.start]:02x} at byte {err.start + 1} of the line)"
    if not text.strip():
        return None, None
    record, problem = parse_json_line(text)
    problem = problem or record_problem(record, mode)
    return (record, None) if problem is None else (None, problem)


def compress_sources(
    sources: list[SourceInput],
    output: str | Path,
    *,
    mode: str = "pretrain",
    on_bad_line: str = "error",
    shard_records: int | None = None,
    shard_mb: float | None = None,
) -> list[dict]:
    """Compress every source; all-or-nothing: on any error no source in `output` is changed.

    A source without records (empty input) is refused with EmptySourceError: training could not use it.
    """
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
            if staged[-1][1]["records"] == 0:
                raise EmptySourceError(_empty_source_message(source, counter["bad_lines"]))
    except BaseException:
        for tmp, _ in staged:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    for tmp, manifest in staged:
        commit_source(tmp, output, manifest["source"])
    return [manifest for _, manifest in staged]


def _empty_source_message(source: SourceInput, bad_lines: int) -> str:
    files = ", ".join(map(str, source.files))
    why = f"all {bad_lines} non-blank lines are bad (skipped)" if bad_lines else "empty or only blank lines"
    return (f"source '{source.name}' would have no records ({files}: {why}); nothing written. "
            "Check the input path, or leave this file out")


def summary_lines(manifests: list[dict], output: str | Path) -> list[str]:
    """A table row per source: records, shards, raw MB, zst MB, ratio, skipped lines."""
    rows = [f"{'source':<20} {'records':>9} {'shards':>6} {'raw MB':>9} {'zst MB':>9} {'ratio':>6} {'bad':>5}"]
    for m in manifests:
        ratio = m["raw_bytes"] / max(1, m["zst_bytes"])
        rows.append(f"{m['source']:<20} {m['records']:>9} {len(m['shards']):>6} {m['raw_bytes'] / 2**20:>9.3f} "
                    f"{m['zst_bytes'] / 2**20:>9.3f} {ratio:>6.2f} {m['bad_lines']:>5}")
    rows.append(f"wrote {len(manifests)} source(s) under {output}")
    return rows
