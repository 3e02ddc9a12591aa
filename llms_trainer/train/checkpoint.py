"""Checkpoints: atomic save, rotation, and the state a resume restores.

    work_dir/checkpoint-<step>/      HF model (safetensors) + tokenizer, loadable by from_pretrained
        adapter/                     LoRA only: the peft adapter (the HF files hold the merged weights)
        trainer_state/state.json     step, tokens seen, lineage id, number of processes, resolved config
        trainer_state/optimizer.pt   tensors and plain values only (DeepSpeed: trainer_state/deepspeed/)
        trainer_state/rng_rank<r>.json, stage_rank<r>.json  per process, plain JSON (stage_rank: the stage's
                                     data / rollout position, StageRun.state_dict)
        COMPLETE                     written last; a directory without it is ignored

A checkpoint is written into `checkpoint-<step>.partial/` and renamed when every process has finished, so
a crash or a full disk mid-save leaves the previous checkpoints as they were; a save that fails on any
process stops every process with one CheckpointError. Rotation renames a checkpoint away (dropping its
COMPLETE name) before deleting it, and only ever deletes older checkpoints of the run's own lineage.
Weights with NaN/inf are never saved. Every process calls `save_checkpoint` and `restore_training_state`
(collectives inside). Multi-node runs need `work_dir` on a shared filesystem.

Loading is pickle-free: `optimizer.pt` loads with `torch.load(weights_only=True)`, the rest is JSON. The
learning-rate schedule is not stored: it is a function of the step and the config (a resume applies the
config's schedule from the resumed step). DeepSpeed's own loader unpickles its files without restriction
(its torch checkpoint engine loads without `weights_only`), so every file of a DeepSpeed checkpoint is
first opened here with `weights_only=True` and a short allow-list of the plain types DeepSpeed writes; a file
holding anything else is refused before DeepSpeed reads it.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from llms_trainer.io import follow_umask, replace_dir, zero_stage
from llms_trainer.tokenizer import TokenizerError
from llms_trainer.tokenizer.save import save_tokenizer
from llms_trainer.train.errors import CheckpointError, NonFiniteError, any_rank

MARKER = "COMPLETE"
STATE_DIR = "trainer_state"
DS_TAG = "engine"
_NAME = re.compile(r"^checkpoint-(\d+)$")
# What a failed write raises: safetensors and torch.save report I/O errors (disk full, file too large) as
# their own SafetensorError and RuntimeError.
WRITE_ERRORS = (OSError, SafetensorError, RuntimeError, TokenizerError)
_LEFTOVER = re.compile(r"^(checkpoint-\d+\.(partial|deleting)|\.checkpoint-\d+\.old-\w+)$")


def complete_checkpoints(work_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, dir) of every complete checkpoint in work_dir, oldest first."""
    found = []
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return found
    for child in work_dir.iterdir():
        match = _NAME.match(child.name)
        if match and (child / MARKER).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def resolve_resume(resume: str, work_dir: str | Path) -> Path | None:
    """`auto`: newest complete checkpoint in work_dir (None if none); `none`: None; else that directory."""
    if resume == "none":
        return None
    if resume == "auto":
        found = complete_checkpoints(work_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / MARKER).is_file():
        raise CheckpointError(f"train.resume: '{path}' is not a complete checkpoint (no {MARKER} file)")
    return path


def leftover_dirs(work_dir: str | Path) -> list[Path]:
    """Directories left by a crashed save (`.partial`), rotation (`.deleting`) or replace (`.old`)."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return []
    return [child for child in work_dir.iterdir() if _LEFTOVER.match(child.name)]


def checkpoint_lineage(checkpoint: Path) -> str | None:
    """The lineage id a checkpoint was written under (None for unreadable or older checkpoints)."""
    try:
        return read_state(checkpoint).get("lineage")
    except CheckpointError:
        return None


def read_state(checkpoint: Path) -> dict:
    """trainer_state/state.json of a checkpoint."""
    try:
        return json.loads((checkpoint / STATE_DIR / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{checkpoint}: unreadable trainer state ({err})") from err


def rng_state() -> dict:
    """Python, numpy, torch (and CUDA) generator states as plain JSON values."""
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(words), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def is_deepspeed(accelerator) -> bool:
    return zero_stage(accelerator) > 0 or accelerator.state.deepspeed_plugin is not None


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def merged_state_dict(peft_base_state: dict) -> dict:
    """A LoRA model's state dict (adapters merged in) under the plain model's names.

    Drops the adapter tensors and the frozen copy of each `modules_to_save` module (e.g. a reward head),
    and names the trained copy and the wrapped base layers as the plain model does, so `from_pretrained`
    of the saved files gets every trained weight.
    """
    out = {}
    for name, tensor in peft_base_state.items():
        if "lora_" in name or ".original_module." in name:
            continue
        out[name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")] = tensor
    return out


def _save_model(accelerator, model, tokenizer, out: Path, failures: list[Exception],
                config_fields: dict | None = None) -> None:
    """HF weights (merged for LoRA, 16-bit gathered under ZeRO-3) + tokenizer, `config_fields` added to the
    saved config.json; collective.

    An OSError on this process is appended to `failures` (the collectives still run on every process).
    """
    unwrapped = accelerator.unwrap_model(model)
    lora = hasattr(unwrapped, "peft_config")
    state_dict = None if lora else accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return
    try:
        if lora:  # adapter for resume, merged weights for from_pretrained
            unwrapped.save_pretrained(str(out / "adapter"))
            unwrapped.merge_adapter()
            try:
                base = unwrapped.get_base_model()
                base.save_pretrained(str(out), state_dict=merged_state_dict(base.state_dict()))
            finally:
                unwrapped.unmerge_adapter()
        else:
            unwrapped.save_pretrained(str(out), state_dict=state_dict)
        if config_fields:
            _add_to_config_json(out / "config.json", config_fields)
        save_tokenizer(tokenizer, out)
        follow_umask(out)
    except WRITE_ERRORS as err:
        failures.append(err)


def _add_to_config_json(path: Path, fields: dict) -> None:
    """Add `fields` to a saved model's config.json, written as transformers writes it."""
    config = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**config, **fields}, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _save_trainer_state(accelerator, model, optimizer, stage_run, state: dict, out: Path,
                        failures: list[Exception]) -> None:
    """Optimizer, per-rank RNG and stage state; collective under DeepSpeed."""
    rank = accelerator.process_index
    if failures:  # this process could not write the weights: the collectives below still need it
        if is_deepspeed(accelerator):
            try:
                model.save_checkpoint(str(out / "deepspeed"), tag=DS_TAG, save_latest=False)
            except WRITE_ERRORS:
                pass
        return
    try:
        _write_json(out / f"rng_rank{rank}.json", rng_state())
        _write_json(out / f"stage_rank{rank}.json", stage_run.state_dict())
    except WRITE_ERRORS as err:
        failures.append(err)
    if is_deepspeed(accelerator):
        try:
            model.save_checkpoint(str(out / "deepspeed"), tag=DS_TAG, save_latest=False)
        except WRITE_ERRORS as err:
            failures.append(err)
    elif accelerator.is_main_process:
        try:
            torch.save(optimizer.state_dict(), out / "optimizer.pt")
        except WRITE_ERRORS as err:
            failures.append(err)
    if accelerator.is_main_process:
        try:
            _write_json(out / "state.json", {**state, "num_processes": accelerator.num_processes})
        except WRITE_ERRORS as err:
            failures.append(err)


def write_failure(err: Exception, folder: Path) -> str:
    """What a failed write ran into, in words: the OS error's text, or for torch.save's own message (its
    writer reports a short write as "[enforce fail at inline_container.cc] . unexpected pos …") whichever of
    the file-size limit or a full disk explains it."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err)
    if "unexpected pos" not in text and "inline_container" not in text:
        return text.splitlines()[0] if text else type(err).__name__
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        return (f"File too large: a trainer-state file reached the file-size limit of {limit} bytes (ulimit -f)"
                " or the disk filled up")
    try:
        free = shutil.disk_usage(folder.parent).free
    except OSError:
        free = -1
    return f"No space left on device: a trainer-state file could not be written whole ({free} bytes free)"


def parameters_finite(accelerator, model) -> bool:
    """True on every process when no trained parameter (this rank's shard under ZeRO) is NaN or inf."""
    bad = False
    for param in model.parameters():
        data = getattr(param, "ds_tensor", None)
        data = param.data if data is None else data
        if data.numel() and not bool(torch.isfinite(data).all()):
            bad = True
            break
    return not any_rank(accelerator, bad)


def saved_config(stage_run) -> dict:
    """What the stage's run adds to the saved model's config.json (its optional `saved_config()`)."""
    return stage_run.saved_config() if hasattr(stage_run, "saved_config") else {}


def save_checkpoint(accelerator, model, tokenizer, optimizer, stage_run, state: dict, work_dir: str | Path,
                    save_total_limit: int | None) -> Path:
    """Write checkpoint-<state['step']> atomically, then rotate this lineage's older ones. All ranks call.

    Raises NonFiniteError (weights with NaN/inf are never saved) or CheckpointError (a write failed on any
    process: the partial directory is removed, earlier checkpoints are untouched), on every process.
    """
    work_dir = Path(work_dir)
    step = int(state["step"])
    if not parameters_finite(accelerator, model):
        raise NonFiniteError(f"the weights hold NaN/inf at step {step}; not saving them")
    final = work_dir / f"checkpoint-{step}"
    partial = work_dir / f"checkpoint-{step}.partial"
    failures: list[Exception] = []
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # a crashed earlier save of this step
        try:
            (partial / STATE_DIR).mkdir(parents=True)
        except WRITE_ERRORS as err:
            failures.append(err)
    if not any_rank(accelerator, bool(failures)):
        _save_model(accelerator, model, tokenizer, partial, failures, saved_config(stage_run))
        _save_trainer_state(accelerator, model, optimizer, stage_run, state, partial / STATE_DIR, failures)
    if any_rank(accelerator, bool(failures)):
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        reason = f" ({write_failure(failures[0], partial)})" if failures else " (on another process)"
        error = CheckpointError(f"could not write {final}{reason}; earlier checkpoints are kept. Free disk space "
                                "(or raise the file-size limit) and resume with train.resume=auto")
        error.agreed = True
        raise error
    if accelerator.is_main_process:
        _write_json(partial / MARKER, {"step": step, "time": time.time()})
        replace_dir(partial, final)
        rotate_checkpoints(work_dir, save_total_limit, state.get("lineage"), keep=final)
    accelerator.wait_for_everyone()
    return final


def rotate_checkpoints(work_dir: str | Path, save_total_limit: int | None, lineage: str | None,
                       keep: Path) -> list[Path]:
    """Delete this lineage's complete checkpoints beyond the newest `save_total_limit`, never `keep`.

    Each is first renamed to `checkpoint-<n>.deleting` (so a kill mid-delete never leaves a directory that
    still looks complete), then deleted. Other lineages and other files in work_dir are never touched.
    """
    if not save_total_limit:
        return []
    ours = [path for _, path in complete_checkpoints(work_dir) if checkpoint_lineage(path) == lineage]
    doomed = [path for path in ours[: max(0, len(ours) - save_total_limit)] if path.resolve() != keep.resolve()]
    for path in doomed:
        retired = path.with_name(f"{path.name}.deleting")
        os.replace(path, retired)
        shutil.rmtree(retired)
    return doomed


# Plain types DeepSpeed writes into its checkpoint files besides tensors (checked with weights_only=True).
def _deepspeed_safe_types() -> list:
    import collections

    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [collections.OrderedDict, ZeroStageEnum, LossScaler, fragment_address, torch.Size]


def check_deepspeed_files(folder: Path) -> None:
    """Refuse a DeepSpeed checkpoint whose files hold anything beyond tensors and a few plain DeepSpeed types."""
    for path in sorted(folder.rglob("*.pt")):
        try:
            with torch.serialization.safe_globals(_deepspeed_safe_types()):
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError, or a bad zip: either way DeepSpeed must not open it
            raise CheckpointError(f"{path}: refused, it holds objects other than tensors and plain DeepSpeed "
                                  f"state ({str(err).splitlines()[0][:200]}); only resume from checkpoints "
                                  "this trainer wrote") from None


def check_resumable(checkpoint: Path, accelerator) -> None:
    """Refuse, before any work, a checkpoint this run cannot resume: process count, backend, unsafe files."""
    state = read_state(checkpoint)
    saved = state.get("num_processes")
    if saved != accelerator.num_processes:
        raise CheckpointError(f"{checkpoint}: written by {saved} processes, this run has "
                              f"{accelerator.num_processes}; resume with the same number (or train.resume=none)")
    folder = checkpoint / STATE_DIR
    if is_deepspeed(accelerator):
        if not (folder / "deepspeed").is_dir():
            raise CheckpointError(f"{checkpoint}: not written under DeepSpeed; resume it with a non-DeepSpeed "
                                  "accelerate config, or start fresh (train.resume=none)")
        check_deepspeed_files(folder / "deepspeed")
    elif not (folder / "optimizer.pt").is_file():
        raise CheckpointError(f"{checkpoint}: written under DeepSpeed; resume it with the same DeepSpeed "
                              "accelerate config, or start fresh (train.resume=none)")


def restore_training_state(accelerator, checkpoint: Path, model, optimizer, stage_run) -> dict:
    """Load optimizer, this rank's RNG and stage state (data position); returns state.json. All ranks call.

    The weights themselves are loaded before `prepare` (from the checkpoint's HF files, or its adapter),
    except under DeepSpeed whose engine checkpoint restores exact weights and optimizer together.
    `check_resumable` has already accepted the checkpoint.
    """
    folder = checkpoint / STATE_DIR
    rank = accelerator.process_index
    try:
        state = read_state(checkpoint)
        if is_deepspeed(accelerator):
            model.load_checkpoint(str(folder / "deepspeed"), tag=DS_TAG, load_optimizer_states=True,
                                  load_lr_scheduler_states=False)
        else:
            optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
        stage_run.load_state_dict(json.loads((folder / f"stage_rank{rank}.json").read_text(encoding="utf-8")))
        set_rng_state(json.loads((folder / f"rng_rank{rank}.json").read_text(encoding="utf-8")))
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{checkpoint}: cannot restore the trainer state ({str(err)[:300]}); it was written "
                              "by an older version or is damaged: resume from another checkpoint or start fresh "
                              "(train.resume=none)") from err
    return state
