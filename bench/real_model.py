"""Real-model benchmark: SmolLM2-135M's architecture on CPU, our training step vs Hugging Face `Trainer`.

The model: LlamaConfig with hidden 576, 30 layers, 9 heads, 3 KV heads, intermediate 1536, vocabulary 49,152,
tied embeddings (134.5 M parameters), randomly initialised (nothing is downloaded), fp32. Rows: packed
pretraining rows of 512 tokens from the bundled samples (our shard pipeline, demo_base tokenizer), built once
and fed to every side: the same rows, AdamW(0.9, 0.95) fused, lr 3e-4 with warmup then cosine, weight decay
0.1, clipping at 1.0, micro-batch `--batch-size`, no accumulation.

(a) ours vs `transformers.Trainer`: tokens/s and peak RSS. Ours is the engine's own step
    (`engine.optimizer_step` over the pretrain stage's run object, with the default `train.loss_chunk_tokens`)
    on a prepared accelerator; no checkpoint is written. Trainer computes its loss from the full logits.
(b) SFT packing vs `Trainer` with dynamic padding: skipped unless llms_trainer/data/sft.py is installed.
(c) ours with `train.compile: true` vs without: tokens/s (compile time excluded by the warmup, printed apart).

Each side runs in its own process, so its peak RSS (`ru_maxrss`, taken at the end of its last step, model and
optimizer state included) is its own. Paired timing, as in bench/train_loop.py but across processes: the
sides are alive together and take their steps in turn (step k of every side, the first place rotating,
then step k + 1), each timed on its own step only, so step k of every side runs under the same load. A ratio
is the median over the steps after `--warmup` of the per-step ratios. (A bare loop inside a side's process,
as train_loop.py pairs, would count in that side's RSS.) One torch thread per side by default: this 2-core
machine is shared, and two OpenMP threads under load ran slower than one (21 s vs 10 s per step).
Prints `name: ours X, baseline Y, ratio Z`.
On a GPU (`--device cuda`, or `auto` when one is visible) every side trains there, `--precision bf16` is
autocast with fp32 master weights on both sides, steps are timed after a device synchronise, peak memory is
the device's (`torch.cuda.max_memory_allocated`), and ours also prints model FLOP utilisation (6·N + 12·layers·
hidden·seq FLOPs per token against the card's dense bf16 peak, as the engine logs it).
Usage: python bench/real_model.py [--quick] [--batch-size 2] [--steps 8] [--warmup 1] [--threads 1]
                                  [--gradient-checkpointing] [--no-compile] [--device auto] [--precision no]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from train_loop import ListLoader  # noqa: E402  (bench/ is this script's directory)

from llms_trainer.train.throughput import PEAK_BF16_FLOPS  # noqa: E402

OUT = ROOT / "bench" / "out" / "real_model"
TOKENIZER = ROOT / "configs" / "tokenizers" / "demo_base"
SEQ_LENGTH, LR, WEIGHT_DECAY, WARMUP_STEPS = 512, 3e-4, 0.1, 1
SMOLLM2_135M = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True,
                "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
                "bos_token_id": 1, "eos_token_id": 2}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def fresh_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).float()


def on_cuda() -> bool:
    return torch.cuda.is_available()  # --device cpu hides the GPUs from every side (CUDA_VISIBLE_DEVICES)


def peak_device_mb() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if on_cuda() else 0.0


def run_config(train: dict):
    """A RunConfig for the engine pieces (no data files are read: the rows are pre-built)."""
    from llms_trainer.config import run_config_model
    from llms_trainer.train.stages import config_stages

    return run_config_model(config_stages()).model_validate({
        "data": {"data": {"samples": str(OUT / "shards")}, "seq_length": SEQ_LENGTH, "tokenizer_path": str(TOKENIZER)},
        "train": {"lr": LR, "min_lr": LR / 10, "weight_decay": WEIGHT_DECAY, "num_warmup_steps": WARMUP_STEPS,
                  "max_grad_norm": 1.0, "mixed_precision": os.environ.get("BENCH_PRECISION", "no"), **train},
        "work_dir": str(OUT / "work")})


def build_rows(batch_size: int, steps: int) -> Path:
    """`steps` micro-batches of packed rows from the bundled pretraining samples, saved for every side."""
    import shutil

    from accelerate import Accelerator

    from llms_trainer.data.shards import dump_record, write_source
    from llms_trainer.model.load import load_tokenizer
    from llms_trainer.train.stages import pretrain

    shutil.rmtree(OUT / "shards", ignore_errors=True)
    for path in sorted((ROOT / "data" / "shuffled_data" / "pretrain").glob("*.jsonl")):
        lines = (dump_record(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line)
        write_source(lines, OUT / "shards", path.stem, shard_records=64, shard_bytes=None)
    cfg = run_config({"train_batch_size": batch_size, "num_training_steps": steps})
    cfg.data.data = {p.name: str(p) for p in sorted((OUT / "shards").iterdir()) if p.is_dir()}
    loader = pretrain.build_train_data(cfg, load_tokenizer(str(TOKENIZER)), Accelerator(cpu=True))
    batches = [{k: v for k, v in b.items() if isinstance(v, torch.Tensor)} for _, b in zip(range(steps), loader,
                                                                                          strict=False)]
    path = OUT / "rows.pt"
    torch.save(batches, path)
    return path


def side_ours(batches: list[dict], compile_layers: bool, checkpointing: bool, turn) -> dict:
    """Our engine's optimizer steps, each when `turn()` says so; peak RSS MB at the end."""
    from llms_trainer.model.load import maybe_compile, prepare_for_training
    from llms_trainer.train import engine, setup, throughput
    from llms_trainer.train.stages import StageContext, pretrain

    cfg = run_config({"train_batch_size": len(batches[0]["input_ids"]), "num_training_steps": len(batches),
                      "compile": compile_layers, "gradient_checkpointing_enable": checkpointing})
    accelerator = setup.build_accelerator(cfg)
    model = maybe_compile(prepare_for_training(fresh_model(), cfg.train), cfg.train, accelerator)
    optimizer = setup.make_optimizer(model, LR, WEIGHT_DECAY)
    scheduler = setup.make_scheduler(optimizer, cfg.train)
    model, prepared = accelerator.prepare(model, optimizer)
    run = pretrain.start(cfg, StageContext(model, None, accelerator, ListLoader(batches)))
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()
    for step in range(len(batches)):
        with turn():
            micro = run.next_step(1)
            engine.optimizer_step(run, model, micro, float(run.loss_divisor(micro[0])), accelerator, prepared,
                                  trainable, cfg.train.max_grad_norm, step, None)
            setup.set_schedule_step(scheduler, step + 1)
    return {"peak_rss_mb": peak_rss_mb(), "peak_device_mb": peak_device_mb(),
            "loss_chunk_tokens": cfg.train.loss_chunk_tokens, "flops_per_token": throughput.flops_per_token(model)}


def side_trainer(batches: list[dict], checkpointing: bool, turn) -> dict:
    """transformers.Trainer on the same rows and optimizer settings, each step when `turn()` says so."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    rows = [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["input_ids"]))]
    peak = [0.0, 0.0]

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.step = turn()
            self.step.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            self.step.__exit__(None, None, None)
            peak[0] = peak_rss_mb()
            peak[1] = peak_device_mb()

    args = TrainingArguments(
        output_dir=str(OUT / "hf_trainer"), max_steps=len(batches), per_device_train_batch_size=len(batches[0]["input_ids"]),
        learning_rate=LR, adam_beta1=0.9, adam_beta2=0.95, weight_decay=WEIGHT_DECAY, max_grad_norm=1.0,
        optim="adamw_torch_fused", lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr": LR / 10},
        warmup_steps=WARMUP_STEPS, logging_steps=10**6, save_strategy="no", report_to=[], use_cpu=not on_cuda(),
        bf16=os.environ.get("BENCH_PRECISION") == "bf16",
        dataloader_num_workers=0, disable_tqdm=True, seed=0,
        **({"activation_checkpointing": True, "activation_checkpointing_kwargs": {"use_reentrant": False}}
           if checkpointing else {}))  # older transformers (GPU image: 5.17) lack these arguments
    Trainer(model=fresh_model(), args=args, train_dataset=rows, callbacks=[Clock()]).train()
    return {"peak_rss_mb": peak[0], "peak_device_mb": peak[1]}


def side(name: str, rows: Path, threads: int, checkpointing: bool, conn) -> None:
    """A side's process: waits for "go" before each step, answers with the step's seconds, then its result."""
    torch.set_num_threads(threads)
    batches = torch.load(rows, weights_only=True)

    @contextmanager
    def turn():
        conn.recv()
        if on_cuda():
            torch.cuda.synchronize()
        started = time.perf_counter()
        yield
        if on_cuda():
            torch.cuda.synchronize()
        conn.send(time.perf_counter() - started)

    result = (side_trainer(batches, checkpointing, turn) if name == "trainer"
              else side_ours(batches, name == "compiled", checkpointing, turn))
    conn.send(result)


def lockstep(names: list[str], rows: Path, steps: int, threads: int, checkpointing: bool) -> dict[str, dict]:
    """Run every side in its own process, one step each in turn: {side: {"seconds": [...], **result}}."""
    context = multiprocessing.get_context("spawn")
    pipes, processes = {}, []
    for name in names:
        mine, theirs = context.Pipe()
        process = context.Process(target=side, args=(name, rows, threads, checkpointing, theirs), daemon=True)
        process.start()
        pipes[name] = mine
        processes.append(process)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for step in range(steps):
        for name in names[step % len(names):] + names[:step % len(names)]:  # each side leads a round in turn
            pipes[name].send("go")
            seconds[name].append(pipes[name].recv())
    results = {name: {"seconds": seconds[name], **pipes[name].recv()} for name in names}
    for process in processes:
        process.join()
        if process.exitcode:
            raise SystemExit(f"error: a benchmark side exited with {process.exitcode}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke check: batch 1, 2 steps, 1 warmup")
    parser.add_argument("--batch-size", type=int, default=2, help="rows of 512 tokens per step (every side)")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="steps not timed (compilation happens here)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per side")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (every side)")
    parser.add_argument("--no-compile", action="store_true", help="leave out (c), the compiled side")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where every side trains")
    parser.add_argument("--precision", choices=("no", "bf16"), default="no", help="autocast on every side")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # inherited by the sides' processes
    elif args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible")
    os.environ["BENCH_PRECISION"] = args.precision
    if args.quick:
        args.batch_size, args.steps, args.warmup = 1, 2, 1
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    OUT.mkdir(parents=True, exist_ok=True)
    rows = build_rows(args.batch_size, args.steps)
    sides = ["ours", "trainer"] + ([] if args.no_compile else ["compiled"])
    results = lockstep(sides, rows, args.steps, args.threads, args.gradient_checkpointing)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    timed = {name: r["seconds"][args.warmup:] for name, r in results.items()}

    def paired(contender: str, baseline: str) -> float:
        """Median over the timed steps of baseline step / contender step (steps k run back to back)."""
        return statistics.median(b / c for c, b in zip(timed[contender], timed[baseline], strict=True))

    tokens = args.batch_size * SEQ_LENGTH
    rate = {name: tokens / statistics.median(s) for name, s in timed.items()}
    chunk = results["ours"]["loss_chunk_tokens"]
    where = (f"{torch.cuda.get_device_name()}, precision {args.precision}" if torch.cuda.is_available()
             else f"cpu, {args.threads} thread(s)")
    setting = (f"batch {args.batch_size}x{SEQ_LENGTH}, loss_chunk_tokens {chunk}, {where}"
               + (", gradient checkpointing" if args.gradient_checkpointing else ""))
    print(f"real_model_vs_hf_trainer (tokens/s, {setting}): ours {rate['ours']:.1f}, baseline {rate['trainer']:.1f}, "
          f"ratio {paired('ours', 'trainer'):.3f}", flush=True)
    rss_ours, rss_trainer = results["ours"]["peak_rss_mb"], results["trainer"]["peak_rss_mb"]
    print(f"real_model_peak_rss_vs_hf_trainer (MB, {setting}): ours {rss_ours:.0f}, baseline {rss_trainer:.0f}, "
          f"ratio {rss_ours / rss_trainer:.3f}", flush=True)
    if torch.cuda.is_available():
        dev_ours, dev_trainer = results["ours"]["peak_device_mb"], results["trainer"]["peak_device_mb"]
        print(f"real_model_peak_gpu_memory_vs_hf_trainer (MB, {setting}): ours {dev_ours:.0f}, "
              f"baseline {dev_trainer:.0f}, ratio {dev_ours / dev_trainer:.3f}", flush=True)
        per_token, per_token_seq = results["ours"]["flops_per_token"]
        achieved = rate["ours"] * (per_token + per_token_seq * SEQ_LENGTH)
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        print(f"real_model_ours_model_flops ({name}, {setting}): {achieved / 1e12:.1f} TFLOP/s"
              + (f", MFU {achieved / peak:.3f} of {peak / 1e12:.0f} dense bf16" if peak else ""), flush=True)
    if (ROOT / "llms_trainer" / "data" / "sft.py").is_file():
        print("sft_packing_vs_hf_dynamic_padding: not measured here yet (bench/real_model.py has no SFT side)")
    else:
        print("sft_packing_vs_hf_dynamic_padding: skipped (llms_trainer/data/sft.py is not installed)")
    if args.no_compile:
        return
    first = results["compiled"]["seconds"][0]
    print(f"real_model_compiled_vs_eager (tokens/s; first compiled step {first:.0f} s): ours {rate['compiled']:.1f}, "
          f"baseline {rate['ours']:.1f}, ratio {paired('compiled', 'ours'):.3f}", flush=True)


if __name__ == "__main__":
    main()
