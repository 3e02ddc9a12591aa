"""Training-loop benchmark: our engine vs a bare torch loop and vs Hugging Face `Trainer`; resume cost.

(a) tokens/s of `llms_trainer.train.engine.train` vs a bare torch loop (same model, micro-batches, AdamW
    and precision, no logging, no scheduler, no checkpoint) — both fed the same pre-built batches; also ours
    fed by the real shard pipeline (tokenising on the fly, no DataLoader workers);
(b) ours vs `transformers.Trainer` on the same model and rows (same AdamW betas, clipping, schedule);
(c) resume cost: seconds from the start of a resumed run to its first training step, resuming at step 500
    vs at step 1 (model + optimizer + RNG + data position restored; the data is never replayed).

Throughput is the median interval between the forward passes of consecutive steps after `--warmup`, so
start-up, the final checkpoint and plotting are excluded for every contender. Each contender runs `--repeats` times
interleaved; the best run counts. Prints `name: ours X, baseline Y, ratio Z`.
Usage: python bench/train_loop.py [--steps 40] [--warmup 5] [--repeats 3] [--resume-steps 500]
Data: the bundled samples (data/shuffled_data/pretrain/*.jsonl), sharded into bench/out/train_loop/.
"""

from __future__ import annotations

import argparse
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
from llms_trainer.train import engine  # noqa: E402
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
                     "min_lr": LR / 10, "weight_decay": 0.1, "mixed_precision": "no", "resume": "none", **train},
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


def timed_stage(stamps: list[float], loader=None) -> Stage:
    """The pretrain stage, stamping the time of every forward (and optionally fed by `loader`)."""
    def loss_sum(model, batch):
        stamps.append(time.perf_counter())
        return pretrain.loss_sum(model, batch)

    build = (lambda cfg, tok, acc: loader) if loader is not None else pretrain.build_train_data
    return Stage("pretrain", build, loss_sum, pretrain.count_items, pretrain.count_tokens, lambda *a: [])


def rate(stamps: list[float], tokens_per_step: int, warmup: int) -> float:
    """Tokens per second of the median step after warmup (robust to bursts of load on a shared machine)."""
    steps = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:], strict=False)]
    return tokens_per_step / statistics.median(steps)


def ours(config: Path, warmup: int, batches: list[dict] | None) -> float:
    stamps: list[float] = []
    stage = timed_stage(stamps, ListLoader(batches) if batches is not None else None)
    original = pretrain.PRETRAIN
    pretrain.PRETRAIN = stage  # run() picks the pretrain stage from this module
    try:
        run(config, [], str(MODEL_CONFIG))
    finally:
        pretrain.PRETRAIN = original
        reset_accelerate()
    return rate(stamps, MICRO_BATCH * SEQ_LENGTH, warmup)


def fresh_model(seed: int = 42):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(load_model_config(MODEL_CONFIG), dtype=torch.float32)


def bare_torch(batches: list[dict], warmup: int) -> float:
    """The minimal loop: forward with labels, backward, clip, AdamW step."""
    model = fresh_model().train()
    optimizer = engine.make_optimizer(model, LR, 0.1)
    stamps = []
    for batch in batches:
        stamps.append(time.perf_counter())
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                     use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return rate(stamps, MICRO_BATCH * SEQ_LENGTH, warmup)


def hf_trainer(batches: list[dict], warmup: int) -> float:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    rows = [{k: v[i] for k, v in b.items()} for b in batches for i in range(MICRO_BATCH)]
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    args = TrainingArguments(
        output_dir=str(OUT / "hf_trainer"), max_steps=len(batches), per_device_train_batch_size=MICRO_BATCH,
        learning_rate=LR, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.1, max_grad_norm=1.0,
        lr_scheduler_type="cosine", warmup_steps=2, logging_steps=10, save_strategy="no", report_to=[],
        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=42)
    trainer = Trainer(model=fresh_model(), args=args, train_dataset=rows, callbacks=[Stamp()])
    trainer.train()
    reset_accelerate()
    return rate(stamps, MICRO_BATCH * SEQ_LENGTH, warmup)


def resume_seconds(config: Path, checkpoint_step: int) -> float:
    """Seconds from calling run() to the first training step after work_dir/checkpoint-<checkpoint_step>."""
    stamps: list[float] = []
    original = pretrain.PRETRAIN
    pretrain.PRETRAIN = timed_stage(stamps)
    try:
        start = time.perf_counter()
        checkpoint = OUT / config.stem / f"checkpoint-{checkpoint_step}"
        run(config, [f"train.resume={checkpoint}", f"train.num_training_steps={checkpoint_step + 1}"],
            str(MODEL_CONFIG))
    finally:
        pretrain.PRETRAIN = original
        reset_accelerate()
    return stamps[0] - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per throughput run")
    parser.add_argument("--warmup", type=int, default=5, help="steps not timed at the start")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per contender (best counts)")
    parser.add_argument("--resume-steps", type=int, default=500, help="the late checkpoint of the resume test")
    args = parser.parse_args()
    data = make_shards()
    config = write_config(data, "ours", args.steps)
    reset_accelerate()
    from accelerate import Accelerator

    from llms_trainer.config import load_config

    loader = pretrain.build_train_data(load_config(config), load_tokenizer(str(TOKENIZER)), Accelerator())
    reset_accelerate()
    batches = [b for _, b in zip(range(args.steps), loader, strict=False)]
    best = {"ours": 0.0, "ours_pipeline": 0.0, "bare": 0.0, "hf": 0.0}
    for _ in range(args.repeats):
        best["bare"] = max(best["bare"], bare_torch(batches, args.warmup))
        best["ours"] = max(best["ours"], ours(config, args.warmup, batches))
        best["ours_pipeline"] = max(best["ours_pipeline"], ours(config, args.warmup, None))
        best["hf"] = max(best["hf"], hf_trainer(batches, args.warmup))
    for name, baseline, key in (("train_loop_vs_bare_torch", "bare", "ours"),
                                ("train_loop_with_shard_pipeline_vs_bare_torch", "bare", "ours_pipeline"),
                                ("train_loop_vs_hf_trainer", "hf", "ours")):
        print(f"{name} (tokens/s): ours {best[key]:.0f}, baseline {best[baseline]:.0f}, "
              f"ratio {best[key] / best[baseline]:.3f}", flush=True)

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
