"""Training-loop benchmark: our engine vs a bare torch loop and vs Hugging Face `Trainer`; resume cost.

(a) tokens/s of `llms_trainer.train.engine.train` vs a bare torch loop (same model, micro-batches, fused
    AdamW and precision; no logging, scheduler or checkpoint) — both fed the same pre-built batches; also
    ours fed by the real shard pipeline (tokenising on the fly, no DataLoader workers);
(b) ours vs `transformers.Trainer` on the same model and rows (fused AdamW, same betas, clipping, schedule);
(c) resume cost: seconds from the start of a resumed run to its first training step, resuming at step 500
    vs at step 1 (model + optimizer + RNG + data position restored; the data is never replayed).

Paired timing (this machine is shared, so load drifts): one step of the bare loop runs between every two
steps of the contender (ours or HF Trainer), and each side is timed on its own steps only; throughput is the
median step after `--warmup` (start-up, final checkpoint and plots excluded). HF Trainer is compared with
ours through the bare steps paired with each. Each contender runs `--repeats` times; the fastest counts.
Prints `name: ours X, baseline Y, ratio Z`. Where a GPU is visible every side trains on it (fp32), and the
bare loop synchronises the device before each of its marks, so a contender's queued kernels count as its own.
Usage: python bench/train_loop.py [--steps 40] [--warmup 5] [--repeats 2] [--resume-steps 500]
Data: the bundled samples (data/shuffled_data/pretrain/*.jsonl), sharded into bench/out/train_loop/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from llms_trainer.data.shards import dump_record, write_source  # noqa: E402
from llms_trainer.model.load import load_model_config, load_tokenizer  # noqa: E402
from llms_trainer.train import setup  # noqa: E402
from llms_trainer.train.run import run  # noqa: E402
from llms_trainer.train.stages import Stage, pretrain  # noqa: E402

OUT = ROOT / "bench" / "out" / "train_loop"
TOKENIZER = ROOT / "configs" / "tokenizers" / "demo_base"
MODEL_CONFIG = ROOT / "configs" / "model_configs" / "tiny_llama.json"
SEQ_LENGTH, MICRO_BATCH, LR = 128, 8, 1e-3


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def make_shards() -> Path:
    """The bundled pretrain samples as shards (one source per file)."""
    data = OUT / "shards"
    shutil.rmtree(data, ignore_errors=True)
    for path in sorted((ROOT / "data" / "shuffled_data" / "pretrain").glob("*.jsonl")):
        lines = (dump_record(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line)
        write_source(lines, data, path.stem, shard_records=16, shard_bytes=None)
    return data


def write_config(data: Path, name: str, steps: int, **train) -> Path:
    cfg = {"data": {"data": {p.name: str(p) for p in sorted(data.iterdir()) if p.is_dir()},
                    "seq_length": SEQ_LENGTH, "tokenizer_path": str(TOKENIZER)},
           "train": {"train_batch_size": MICRO_BATCH, "num_training_steps": steps, "num_warmup_steps": 2, "lr": LR,
                     "min_lr": LR / 10, "weight_decay": 0.1, "mixed_precision": "no", "resume": "none",
                     "overwrite_work_dir": True, **train},
           "log_interval": 10, "save_interval": 10**9, "work_dir": str(OUT / name)}
    path = OUT / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    shutil.rmtree(OUT / name, ignore_errors=True)
    return path


class ListLoader:
    """Pre-built micro-batches behind the loader interface the engine uses."""

    def __init__(self, batches: list[dict]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def state_dict(self) -> dict:
        return {}

    def report(self) -> dict:
        return {}


def timed_stage(before_forward, loader=None) -> Stage:
    """The pretrain stage calling `before_forward()` ahead of every forward (optionally fed by `loader`)."""
    def start(cfg, ctx):
        run = pretrain.start(cfg, ctx)
        lm_loss = run.loss

        def loss(model, batch):
            before_forward()
            return lm_loss(model, batch)

        run.loss = loss
        return run

    build = (lambda cfg, tok, acc: loader) if loader is not None else pretrain.build_train_data
    return dataclasses.replace(pretrain.STAGE, build_train_data=build, build_evals=lambda *a: [], start=start)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def fresh_model(seed: int = 42):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(load_model_config(MODEL_CONFIG), dtype=torch.float32)


class PairedBareLoop:
    """The bare torch loop, one step at a time, run between the contender's steps.

    `mark()` runs one bare step and records when it started and ended. The contender's step k is the time
    from the end of bare step k to the start of bare step k + 1, so both are measured in the same moments
    of machine load. Bare step: forward with labels, backward, clip, AdamW (the engine's optimizer) step.
    """

    def __init__(self, batches: list[dict]):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.batches, self.marks = [{k: v.to(device) for k, v in b.items()} for b in batches], []
        self.model = fresh_model().to(device).train()
        self.optimizer = setup.make_optimizer(self.model, LR, 0.1)

    def mark(self) -> None:
        sync()
        start = time.perf_counter()
        batch = self.batches[len(self.marks) % len(self.batches)]
        loss = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"], use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync()
        self.marks.append((start, time.perf_counter()))

    def medians(self, warmup: int) -> tuple[float, float]:
        """(median contender step, median bare step) in seconds, after `warmup` steps."""
        marks = self.marks[warmup:]
        contender = [nxt[0] - cur[1] for cur, nxt in zip(marks, marks[1:], strict=False)]
        return statistics.median(contender), statistics.median(end - start for start, end in marks)


def ours(config: Path, warmup: int, batches: list[dict], fed_by_pipeline: bool) -> tuple[float, float]:
    """(our median step, paired bare step) in seconds."""
    bare = PairedBareLoop(batches)
    original = pretrain.STAGE
    pretrain.STAGE = timed_stage(bare.mark, None if fed_by_pipeline else ListLoader(batches))
    try:
        run(config, [], str(MODEL_CONFIG))  # run() takes the pretrain stage from the registry's module
    finally:
        pretrain.STAGE = original
        reset_accelerate()
    return bare.medians(warmup)


def hf_trainer(batches: list[dict], warmup: int) -> tuple[float, float]:
    """(HF Trainer median step, paired bare step) in seconds."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    rows = [{k: v[i] for k, v in b.items()} for b in batches for i in range(MICRO_BATCH)]
    bare = PairedBareLoop(batches)

    class Pair(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            bare.mark()

    args = TrainingArguments(
        output_dir=str(OUT / "hf_trainer"), max_steps=len(batches), per_device_train_batch_size=MICRO_BATCH,
        learning_rate=LR, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.1, max_grad_norm=1.0,
        lr_scheduler_type="cosine", warmup_steps=2, logging_steps=10, save_strategy="no", report_to=[],
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, disable_tqdm=True, seed=42)
    Trainer(model=fresh_model(), args=args, train_dataset=rows, callbacks=[Pair()]).train()
    reset_accelerate()
    return bare.medians(warmup)


def resume_seconds(config: Path, checkpoint_step: int) -> float:
    """Seconds from calling run() to the first training step after work_dir/checkpoint-<checkpoint_step>."""
    stamps: list[float] = []
    original = pretrain.STAGE
    pretrain.STAGE = timed_stage(lambda: stamps.append(time.perf_counter()))
    try:
        start = time.perf_counter()
        checkpoint = OUT / config.stem / f"checkpoint-{checkpoint_step}"
        run(config, [f"train.resume={checkpoint}", f"train.num_training_steps={checkpoint_step + 1}"],
            str(MODEL_CONFIG))
    finally:
        pretrain.STAGE = original
        reset_accelerate()
    return stamps[0] - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per throughput run")
    parser.add_argument("--warmup", type=int, default=5, help="steps not timed at the start")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per contender (best counts)")
    parser.add_argument("--resume-steps", type=int, default=500, help="the late checkpoint of the resume test")
    args = parser.parse_args()
    data = make_shards()
    config = write_config(data, "ours", args.steps)
    reset_accelerate()
    from accelerate import Accelerator

    from llms_trainer.train.stages import load_config

    loader = pretrain.build_train_data(load_config(config), load_tokenizer(str(TOKENIZER)), Accelerator())
    reset_accelerate()
    batches = [b for _, b in zip(range(args.steps), loader, strict=False)]
    tokens = MICRO_BATCH * SEQ_LENGTH
    runs = {"ours": [], "ours_pipeline": [], "hf": []}
    for _ in range(args.repeats):
        runs["ours"].append(ours(config, args.warmup, batches, fed_by_pipeline=False))
        runs["ours_pipeline"].append(ours(config, args.warmup, batches, fed_by_pipeline=True))
        runs["hf"].append(hf_trainer(batches, args.warmup))
    best = {name: min(pairs) for name, pairs in runs.items()}  # (contender, bare) of the fastest repeat
    for name, key in (("train_loop_vs_bare_torch", "ours"),
                      ("train_loop_with_shard_pipeline_vs_bare_torch", "ours_pipeline")):
        mine, bare = best[key]
        print(f"{name} (tokens/s, paired steps): ours {tokens / mine:.0f}, baseline {tokens / bare:.0f}, "
              f"ratio {bare / mine:.3f}", flush=True)
    (mine, bare_mine), (hf, bare_hf) = best["ours"], best["hf"]
    hf_scaled = hf * bare_mine / bare_hf  # HF's step at the load our run saw (the paired bare steps compare them)
    print(f"train_loop_vs_hf_trainer (tokens/s): ours {tokens / mine:.0f}, baseline {tokens / hf_scaled:.0f}, "
          f"ratio {hf_scaled / mine:.3f}", flush=True)

    early = write_config(data, "resume_early", 1, train_batch_size=2, num_warmup_steps=0)
    late = write_config(data, "resume_late", args.resume_steps, train_batch_size=2)
    for path in (early, late):
        run(path, ["train.resume=none"], str(MODEL_CONFIG))
        reset_accelerate()
    first = last = float("inf")
    for _ in range(args.repeats):  # interleaved; the fastest of each counts
        first = min(first, resume_seconds(early, 1))
        last = min(last, resume_seconds(late, args.resume_steps))
    print(f"resume_cost_step{args.resume_steps}_vs_step1 (s to first step): ours {last:.2f}, baseline {first:.2f}, "
          f"ratio {last / first:.3f}", flush=True)


if __name__ == "__main__":
    main()
