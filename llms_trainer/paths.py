"""Where the repository's bundled files are (configs/, data/, eval_data/, utils/) and how input paths find them.

The lowest module of the package (standard library only), so the command modules stay light (no torch) and
every --help stays instant.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout holding llms_trainer/

Datasets = str | list[str] | dict[str, str] | None


def bundled(path: str | None) -> str | None:
    """A relative input path as given when it exists from the working directory, else the repository's
    bundled file of that name when that exists (so shipped configs run from any directory)."""
    if not path or os.path.isabs(path) or glob.glob(path) or os.path.exists(path):
        return path
    candidate = REPO_ROOT / path
    return str(candidate) if glob.glob(str(candidate)) or candidate.exists() else path


def bundled_files(value: Datasets) -> Datasets:
    """A dataset key (path, list or {name: path}) with each relative path resolved by `bundled`."""
    if isinstance(value, str):
        return bundled(value)
    if isinstance(value, list):
        return [bundled(v) for v in value]
    if isinstance(value, dict):
        return {k: bundled(v) for k, v in value.items()}
    return value
