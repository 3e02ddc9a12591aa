"""Files and directories that appear atomically and with the permissions the umask gives.

`tempfile.mkdtemp` / `mkstemp` create 0700 directories and 0600 files: fine for private scratch space, wrong
for outputs that are renamed into place, which then stay unreadable to other users (a shared filesystem for
a multi-node run, a teammate reading the shards). These helpers create their temporaries with the ordinary
modes (0777 / 0666 minus the umask), exactly as `mkdir` and `open` would, and `follow_umask` gives weights
written by safetensors (always 0600) the same mode.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

_ATTEMPTS = 100


def make_temp_dir(parent: str | Path, prefix: str) -> Path:
    """A new, uniquely named directory `parent/<prefix><random>` with mode 0777 minus the umask."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(_ATTEMPTS):
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{parent}: could not create a temporary directory named {prefix}*")


def atomic_write(target: str | Path, data: bytes | str) -> Path:
    """Write `data` (str as UTF-8) to a temporary file beside `target`, then rename it over `target`.

    Readers see the old file or the new one, never half of it; the new file has mode 0666 minus the umask.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    for _ in range(_ATTEMPTS):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(f"{target}: could not create a temporary file beside it")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(folder: str | Path) -> None:
    """Give every `*.safetensors` file under `folder` the mode 0666 minus the umask, as its siblings have.

    safetensors creates its files 0600 whatever the umask, so weights written by `save_pretrained` would be
    the one file of a checkpoint other users cannot read. Call before the folder is renamed into place.
    """
    mode = 0o666 & ~current_umask()
    for path in Path(folder).rglob("*.safetensors"):
        os.chmod(path, mode)


def replace_dir(new: str | Path, final: str | Path) -> Path:
    """Swap the finished directory `new` into place of `final` with renames: readers see the old one or the
    new one, never a mix; the old one is deleted afterwards."""
    new, final = Path(new), Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{secrets.token_hex(4)}")
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def zero_stage(accelerator) -> int:
    """The DeepSpeed ZeRO stage of a run (0 without DeepSpeed)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return 0
    return int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0) or 0)
