"""Checkpoints (DESIGN §5): atomic save, rotation, and the state a resume restores.

    work_dir/checkpoint-<step>/      HF model (safetensors) + tokenizer, loadable by from_pretrained
        adapter/                     LoRA only: the peft adapter (the HF files hold the merged weights)
        trainer_state/state.json     step, tokens seen, number of processes, resolved config
        trainer_state/optimizer.pt, scheduler.pt      (DeepSpeed: trainer_state/deepspeed/, every rank's shard)
        trainer_state/rng_rank<r>.pt, data_rank<r>.json   per process
        COMPLETE                     written last; a directory without it is ignored

A checkpoint is written into `checkpoint-<step>.partial/` and renamed when every process has finished, so
a crash mid-save leaves the previous checkpoints as they were. Every process calls `save_checkpoint` and
`restore_training_state` (collectives inside). Multi-node runs need `work_dir` on a shared filesystem.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

MARKER = "COMPLETE"
STATE_DIR = "trainer_state"
DS_TAG = "engine"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (message names the directory)."""


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


def read_state(checkpoint: Path) -> dict:
    """trainer_state/state.json of a checkpoint."""
    try:
        return json.loads((checkpoint / STATE_DIR / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{checkpoint}: unreadable trainer state ({err})") from err


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_deepspeed(accelerator) -> bool:
    return accelerator.state.deepspeed_plugin is not None


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _save_model(accelerator, model, tokenizer, out: Path) -> None:
    """HF weights (merged for LoRA, 16-bit gathered under ZeRO-3) + tokenizer; collective."""
    unwrapped = accelerator.unwrap_model(model)
    if hasattr(unwrapped, "peft_config"):  # LoRA: adapter for resume, merged weights for from_pretrained
        if accelerator.is_main_process:
            unwrapped.save_pretrained(str(out / "adapter"))
            unwrapped.merge_adapter()
            try:
                base = unwrapped.get_base_model()
                merged = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if "lora_" not in k}
                base.save_pretrained(str(out), state_dict=merged)
            finally:
                unwrapped.unmerge_adapter()
    else:
        state_dict = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            unwrapped.save_pretrained(str(out), state_dict=state_dict)
    if accelerator.is_main_process:
        tokenizer.save_pretrained(str(out))


def _save_trainer_state(accelerator, model, optimizer, scheduler, loader, state: dict, out: Path) -> None:
    """Optimizer, scheduler, per-rank RNG and data position; collective under DeepSpeed."""
    rank = accelerator.process_index
    torch.save(rng_state(), out / f"rng_rank{rank}.pt")
    _write_json(out / f"data_rank{rank}.json", loader.state_dict())
    if is_deepspeed(accelerator):
        model.save_checkpoint(str(out / "deepspeed"), tag=DS_TAG, save_latest=False)
    elif accelerator.is_main_process:
        torch.save(optimizer.state_dict(), out / "optimizer.pt")
        torch.save(scheduler.state_dict(), out / "scheduler.pt")
    if accelerator.is_main_process:
        _write_json(out / "state.json", {**state, "num_processes": accelerator.num_processes})


def save_checkpoint(accelerator, model, tokenizer, optimizer, scheduler, loader, state: dict,
                    work_dir: str | Path, save_total_limit: int | None) -> Path:
    """Write checkpoint-<state['step']> atomically, then keep the newest `save_total_limit`. All ranks call."""
    work_dir = Path(work_dir)
    step = int(state["step"])
    final = work_dir / f"checkpoint-{step}"
    partial = work_dir / f"checkpoint-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # a crashed earlier save of this step
        (partial / STATE_DIR).mkdir(parents=True)
    accelerator.wait_for_everyone()
    _save_model(accelerator, model, tokenizer, partial)
    _save_trainer_state(accelerator, model, optimizer, scheduler, loader, state, partial / STATE_DIR)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json(partial / MARKER, {"step": step, "time": time.time()})
        _replace_dir(partial, final)
        rotate_checkpoints(work_dir, save_total_limit)
    accelerator.wait_for_everyone()
    return final


def _replace_dir(new: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.with_name(f"{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def rotate_checkpoints(work_dir: str | Path, save_total_limit: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond the limit; nothing else in work_dir is touched."""
    if not save_total_limit:
        return []
    found = complete_checkpoints(work_dir)
    doomed = [path for _, path in found[: max(0, len(found) - save_total_limit)]]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def restore_training_state(accelerator, checkpoint: Path, model, optimizer, scheduler, loader) -> dict:
    """Load optimizer, scheduler, this rank's RNG and data position; returns state.json. All ranks call.

    The weights themselves are loaded before `prepare` (from the checkpoint's HF files, or its adapter),
    except under DeepSpeed whose engine checkpoint restores exact weights and optimizer together.
    """
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
        model.load_checkpoint(str(folder / "deepspeed"), tag=DS_TAG, load_optimizer_states=True,
                              load_lr_scheduler_states=True)
    else:
        if not (folder / "optimizer.pt").is_file():
            raise CheckpointError(f"{checkpoint}: written under DeepSpeed; resume it with the same DeepSpeed "
                                  "accelerate config, or start fresh (train.resume=none)")
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False))
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
    rank = accelerator.process_index
    loader.load_state_dict(json.loads((folder / f"data_rank{rank}.json").read_text(encoding="utf-8")))
    set_rng_state(torch.load(folder / f"rng_rank{rank}.pt", weights_only=False))
    return state
