"""Tokenizer extension: train SentencePiece on shards (train.py), merge into a base (merge.py), chat tokens and
the chat template (chat.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llms_trainer.io import follow_umask, make_temp_dir


class TokenizerError(ValueError):
    """Bad tokenizer input: a missing or unreadable file, an impossible setting, an output that exists."""


@contextmanager
def new_output_dir(output: str | Path) -> Iterator[Path]:
    """A temporary directory beside `output` that becomes `output` when the block succeeds.

    Refuses an existing `output`; on any error the temporary directory is removed, so nothing half-written
    is ever visible under the final name. Files in it end with the modes the umask gives (`follow_umask`).
    """
    output = Path(output)
    if output.exists():
        raise TokenizerError(f"{output} already exists; choose another --output or delete it")
    tmp = make_temp_dir(output.parent, f".{output.name}.tmp-")  # not mkdtemp: 0700 would stay on `output`
    try:
        yield tmp
        follow_umask(tmp)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
