"""Mixture feedback benchmark: does the proposed policy help, at equal tokens, against the uniform policy?

Three synthetic sources on the tiny Llama (configs/model_configs/tiny_llama.json, from scratch):
  easy      — one short sentence repeated (learned within a few steps);
  learnable — a consistent generated grammar: a random clause, then the same clause with its two nouns
              swapped (the second half follows from the first: hard for a tiny model, but learnable);
  noise     — random tokens: words drawn uniformly from the tokenizer's single-token words (nothing to
              learn beyond which tokens occur).
Both arms start with the same round from uniform shares. Then, for `--rounds` - 1 more rounds of `--steps`
optimizer steps each (every round continues from the previous round's checkpoint with a fresh optimizer and
schedule, the same for both arms): ours takes the policy `llms_trainer.sampler_viewer.proposal.propose`
proposes from the previous round's held-out losses, the baseline keeps uniform shares. Every round trains the
same number of tokens (packed rows), so the arms are compared at equal tokens. Reported: the held-out nats
per character of each source after the last round, and their mean over sources, ours vs uniform.
Prints `name: ours X, baseline Y, ratio Z`. Usage: python bench/mixture_feedback.py [--rounds 3] [--steps 60]
Data and runs go to bench/out/mixture_feedback/ (deleted and rebuilt on every run).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from llms_trainer.data.shards import dump_record, write_source  # noqa: E402
from llms_trainer.sampler_viewer.feedback import read_run  # noqa: E402
from llms_trainer.sampler_viewer.proposal import RuleSettings, propose  # noqa: E402
from llms_trainer.train.run import run  # noqa: E402

OUT = ROOT / "bench" / "out" / "mixture_feedback"
TOKENIZER = ROOT / "configs" / "tokenizers" / "demo_base"
MODEL_CONFIG = ROOT / "configs" / "model_configs" / "tiny_llama.json"
SOURCES = ("easy", "learnable", "noise")
HOLDOUT = 40
NOUNS = ["fox", "owl", "cat", "dog", "bee", "ant", "cow", "pig", "hen", "elk", "yak", "bat"]
ADJECTIVES = ["red", "blue", "old", "young", "small", "big", "green", "brown"]
VERBS = ["sees", "likes", "helps", "finds", "calls", "meets"]


def single_token_words() -> list[str]:
    """Words that the demo tokenizer encodes as one token each (after a space)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER))
    words = sorted(p[1:] for p in tokenizer.get_vocab() if p.startswith("▁") and p[1:].isascii() and p[1:].isalpha())
    return [w for w in words if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]


def documents(source: str, n: int, seed: int, words: list[str]) -> list[str]:
    """n documents of one synthetic source (see the module text); `words`: the noise source's vocabulary."""
    rng = random.Random(f"{source}:{seed}")
    docs = []
    for _ in range(n):
        if source == "easy":
            docs.append(" ".join(["the sun is warm and the sky is blue."] * 6))
        elif source == "learnable":
            clauses = []
            for _ in range(4):
                a, b = rng.sample(NOUNS, 2)
                x, y, verb = rng.choice(ADJECTIVES), rng.choice(ADJECTIVES), rng.choice(VERBS)
                clauses.append(f"the {x} {a} {verb} the {y} {b}, so the {y} {b} {verb} the {x} {a}.")
            docs.append(" ".join(clauses))
        else:
            docs.append(" ".join(rng.choices(words, k=60)))
    return docs


def write_data(records: int) -> dict[str, str]:
    """Shards of the three sources; the last HOLDOUT records of each are held out by the runs."""
    data, words = OUT / "data", single_token_words()
    for source in SOURCES:
        write_source((dump_record({"text": t}) for t in documents(source, records, 1, words)), data, source,
                     shard_records=None)
    return {s: str(data / s) for s in SOURCES}


def train_round(name: str, sources: dict[str, str], policy: dict[str, float], args, ckpt: Path | None) -> Path:
    """One round of `args.steps` steps under `policy`, from `ckpt` (None: from scratch); returns its work_dir."""
    from accelerate.state import AcceleratorState, GradientState

    (OUT / f"{name}.policy.json").write_text(json.dumps(policy))
    config = {"data": {"mode": "pretrain", "data": sources, "sample_policy_file": str(OUT / f"{name}.policy.json"),
                       "concat_multiple_sequence": True, "seq_length": args.seq_length,
                       "tokenizer_path": str(TOKENIZER)},
              "train": {"train_batch_size": args.batch_size, "num_training_steps": args.steps,
                        "num_warmup_steps": max(1, args.steps // 10), "lr": 3e-3, "min_lr": 3e-4,
                        "weight_decay": 0.1, "ckpt": str(ckpt) if ckpt else None, "seed": 42,
                        "mixed_precision": "no", "train_and_eval": True, "resume": "none",
                        "overwrite_work_dir": True},
              "eval": {"source_holdout_records": HOLDOUT, "batch_size": 16},
              "log_interval": max(1, args.steps // 12), "eval_interval": max(1, args.steps // 4),
              "save_interval": 10**6, "work_dir": str(OUT / name)}
    path = OUT / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        run(path, [], None if ckpt else str(MODEL_CONFIG))
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    return OUT / name


def final_losses(work_dir: Path) -> dict[str, float]:
    """Held-out nats per character of each source at the run's last eval."""
    return {s.name: s.loss[-1] for s in read_run(work_dir).sources}


def checkpoint(work_dir: Path) -> Path:
    return max(work_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="train → propose rounds, the first uniform for both")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per round")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per step")
    parser.add_argument("--seq-length", type=int, default=128, help="tokens per row")
    parser.add_argument("--records", type=int, default=400, help="records per source (HOLDOUT of them held out)")
    args = parser.parse_args(argv)
    started = time.time()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    sources = write_data(args.records)
    uniform = dict.fromkeys(SOURCES, 1 / len(SOURCES))
    first = train_round("round1", sources, uniform, args, None)
    ours = baseline = first
    policies = [uniform]
    for k in range(2, args.rounds + 1):
        policy = propose(read_run(ours), RuleSettings()).policy
        policies.append(policy)
        ours = train_round(f"ours_round{k}", sources, policy, args, checkpoint(ours))
        baseline = train_round(f"uniform_round{k}", sources, uniform, args, checkpoint(baseline))
    tokens = args.rounds * args.steps * args.batch_size * args.seq_length
    print(f"{args.rounds} rounds × {args.steps} steps × {args.batch_size}×{args.seq_length} tokens = {tokens:,} "
          f"tokens per arm; {time.time() - started:.0f} s")
    policies.append(propose(read_run(ours), RuleSettings()).policy)  # what a next round would use
    for k, policy in enumerate(policies, start=1):
        print(f"round {k} policy (ours): " + ", ".join(f"{n} {100 * v:.1f} %" for n, v in policy.items()))
    mine, theirs = final_losses(ours), final_losses(baseline)
    for name in SOURCES:
        print(f"held-out nats/char, {name}: ours {mine[name]:.4f}, baseline {theirs[name]:.4f}, "
              f"ratio {mine[name] / theirs[name]:.3f}")
    mean_ours, mean_base = sum(mine.values()) / len(mine), sum(theirs.values()) / len(theirs)
    print(f"held-out nats/char, mean of the sources: ours {mean_ours:.4f}, baseline {mean_base:.4f}, "
          f"ratio {mean_ours / mean_base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
