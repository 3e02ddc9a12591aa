"""The figures of `make demo-real` (scripts/demo_real.sh), measured the same way for every model of the run.

Characters per token and held-out NLL on the Chinese (and English) records of eval_data/pretrain/nll.jsonl
for SmolLM2-135M-Instruct as converted, after the tokenizer extension (step 0), after continued pretraining
(and the original model after the same continued pretraining without the extension, side by side) and after
SFT; the assistant-token NLL of eval_data/sft/chat_nll.jsonl before and after
SFT; each run's train loss, and the reward model's pair accuracy on the held-out test pairs (its final eval).
NLL per character (the text's total NLL ÷ its characters) compares models with different tokenizers; NLL per
token does not. Prints a Markdown table and writes it to --output.

  python scripts/demo_real_summary.py --work work_dirs/smollm2 --output work_dirs/demo_real_summary.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package, installed or not

from llms_trainer.cli import make_parser  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEQ_LENGTH = 1024  # every eval text fits one window: no text is cut, each token sees all its context
MODELS = {"converted": "SmolLM2 (converted)", "extended": "extended (step 0)", "pretrained": "+ pretraining",
          "sft": "+ SFT"}


def is_chinese(text: str) -> bool:
    """More than half of the characters are CJK ideographs."""
    return sum("\u4e00" <= c <= "\u9fff" for c in text) > len(text) / 2


def latest_checkpoint(work_dir: Path) -> Path:
    checkpoints = [p for p in work_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    if not checkpoints:
        raise FileNotFoundError(f"{work_dir}: no checkpoint-<step> directory; did its training run finish?")
    return max(checkpoints, key=lambda p: int(p.name.split("-")[-1]))


def chars_per_token(tokenizer, texts: list[str]) -> float:
    tokens = sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in texts)
    return sum(map(len, texts)) / tokens


def windows_nll(model, tokenizer, windows, batch_size: int = 4) -> tuple[float, int]:
    """(total NLL in nats, target tokens) over (inputs, targets) windows."""
    import torch

    from llms_trainer.data.packing import pad_id
    from llms_trainer.evaluation.nll import window_nll

    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            for nats, targets in window_nll(model, windows[start:start + batch_size], pad_id(tokenizer), "cpu"):
                total, count = total + nats, count + targets
    return total, count


def text_nll(model, tokenizer, texts: list[str]) -> dict[str, float]:
    """NLL of BOS + text + EOS documents, as training and nll_eval build them: per token and per character."""
    from llms_trainer.evaluation.nll import encode_document, nll_windows

    windows = [w for t in texts for w in nll_windows(encode_document(tokenizer, t), SEQ_LENGTH)]
    total, count = windows_nll(model, tokenizer, windows)
    return {"per_token": total / count, "per_char": total / sum(map(len, texts)), "tokens": count}


def chat_nll(model, tokenizer, path: Path) -> float:
    """Mean NLL per assistant token of held-out conversations, encoded as SFT trains on them."""
    from llms_trainer.evaluation.nll import load_chat_windows

    total, count = windows_nll(model, tokenizer, load_chat_windows(path, tokenizer, SEQ_LENGTH))
    return total / count


def measure(model_dir: Path, texts: dict[str, list[str]], chat_file: Path | None) -> dict:
    """Every figure of one model dir (HF model + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM

    from llms_trainer.model.load import load_tokenizer

    start = time.time()
    tokenizer = load_tokenizer(str(model_dir), key=str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    result = {"dir": str(model_dir), "vocab": len(tokenizer)}
    for lang, items in texts.items():
        result[f"{lang}_chars_per_token"] = chars_per_token(tokenizer, items)
        result[f"{lang}_nll"] = text_nll(model, tokenizer, items)
    if chat_file is not None:
        result["chat_nll"] = chat_nll(model, tokenizer, chat_file)
    print(f"measured {model_dir} in {time.time() - start:.0f} s", flush=True)
    return result


def read_rows(work_dir: Path) -> list[dict]:
    from llms_trainer.metrics import read_metrics

    return read_metrics(work_dir / "metrics.jsonl")


def run_summary(work_dir: Path) -> dict:
    """Steps, train loss first → last and the last values of the eval metrics of one training run."""
    rows = read_rows(work_dir)
    losses = [(r["step"], r["train/loss"]) for r in rows if r.get("train/loss") is not None]
    last: dict = {}
    for row in rows:
        last.update({k: v for k, v in row.items() if k.startswith("eval/")})
    return {"steps": losses[-1][0] if losses else 0, "loss_first": losses[0][1] if losses else None,
            "loss_last": losses[-1][1] if losses else None,
            "tokens": max((r.get("train/tokens_seen", 0) or 0 for r in rows), default=0), "eval": last}


def fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render(models: dict[str, dict], runs: dict[str, dict], timings: list[tuple[str, float]]) -> str:
    """The Markdown summary."""
    names = [n for n in models if n in MODELS]
    header = "| | " + " | ".join(MODELS[n] for n in names) + " |\n|---|" + "---|" * len(names) + "\n"

    def row(label: str, get) -> str:
        return f"| {label} | " + " | ".join(get(models[n]) for n in names) + " |\n"

    table = header
    table += row("vocabulary", lambda m: f"{m['vocab']:,}")
    table += row("Chinese characters per token", lambda m: fmt(m.get("zh_chars_per_token"), 2))
    table += row("English characters per token", lambda m: fmt(m.get("en_chars_per_token"), 2))
    table += row("Chinese NLL, nats per character", lambda m: fmt(m.get("zh_nll", {}).get("per_char")))
    table += row("Chinese NLL, nats per token", lambda m: fmt(m.get("zh_nll", {}).get("per_token")))
    table += row("English NLL, nats per character", lambda m: fmt(m.get("en_nll", {}).get("per_char")))
    table += row("chat NLL (assistant tokens), nats per token", lambda m: fmt(m.get("chat_nll")))
    rm = runs["reward"]["eval"]
    lines = ["# make demo-real: SmolLM2-135M-Instruct, Chinese tokenizer extension, pretraining, SFT, reward model",
             "", side_by_side(models, runs), table, "| run | steps | tokens | logged train loss, first → last |", "|---|---|---|---|"]
    for name, run in runs.items():
        tokens = f"{run['tokens']:,.0f}" if run["tokens"] else "–"
        lines.append(f"| {name} | {run['steps']} | {tokens} | {fmt(run['loss_first'])} → {fmt(run['loss_last'])} |")
    lines += ["", f"Reward model, held-out pairs (eval_data/reward_model/test_pairs.jsonl): accuracy "
              f"{fmt(rm.get('eval/reward/accuracy'), 2)}, mean score delta "
              f"{fmt(rm.get('eval/reward/test_pairs/delta_mean'))}", ""]
    if timings:
        lines += ["| step | wall time, s |", "|---|---|"] + [f"| {n} | {s:.0f} |" for n, s in timings]
        lines.append(f"| total (to the summary) | {sum(s for _, s in timings):.0f} |")
    return "\n".join(lines) + "\n"


def side_by_side(models: dict[str, dict], runs: dict[str, dict]) -> str:
    """Original vs extended tokenizer: step-0 and after-pretraining nats per character, and what each read."""
    pairs = [("converted", "extended"), ("original_pretrained", "pretrained")]
    lines = ["| | original tokenizer | extended tokenizer |", "|---|---|---|",
             f"| Chinese characters per token | {fmt(models['converted'].get('zh_chars_per_token'), 2)} | "
             f"{fmt(models['extended'].get('zh_chars_per_token'), 2)} |"]
    for lang, name in (("zh", "Chinese"), ("en", "English")):
        for (a, b), when in zip(pairs, ("step 0", "after pretraining"), strict=True):
            lines.append(f"| {name} NLL, nats per character, {when} | {fmt(models[a][f'{lang}_nll']['per_char'])} | "
                         f"{fmt(models[b][f'{lang}_nll']['per_char'])} |")
    steps = [runs[n] for n in ("pretrain_original", "pretrain")]
    lines.append("| pretraining steps, tokens | " + " | ".join(f"{r['steps']}, {r['tokens']:,.0f}" for r in steps) + " |")
    return "\n".join(lines) + "\n"


def read_timings(path: Path) -> list[tuple[str, float]]:
    """(step, seconds) lines written by scripts/demo_real.sh (tab-separated); [] when absent."""
    if not path.is_file():
        return []
    return [(line.split("\t")[0], float(line.split("\t")[1])) for line in path.read_text().splitlines() if "\t" in line]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--work", default=str(ROOT / "work_dirs/smollm2"), help="the demo's work dir: hf/, "
                        "tokenizer/extended_model/, pretrain/, sft/, reward/ and timings.tsv")
    parser.add_argument("--nll-text", default=str(ROOT / "eval_data/pretrain/nll.jsonl"),
                        help="held-out {text} records, split into Chinese and English")
    parser.add_argument("--chat-text", default=str(ROOT / "eval_data/sft/chat_nll.jsonl"),
                        help="held-out conversations for the chat NLL")
    parser.add_argument("--output", default=str(ROOT / "work_dirs/demo_real_summary.md"),
                        help="where the Markdown summary is written")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from llms_trainer.evaluation.nll import load_nll_texts

    work = Path(args.work)
    texts = load_nll_texts(args.nll_text)
    split = {"zh": [t for t in texts if is_chinese(t)], "en": [t for t in texts if not is_chinese(t)]}
    chat = Path(args.chat_text)
    models = {"converted": measure(work / "hf", split, None),  # no chat tokens yet
              "extended": measure(work / "tokenizer/extended_model", split, chat),
              "pretrained": measure(latest_checkpoint(work / "pretrain"), split, chat),
              "original_pretrained": measure(latest_checkpoint(work / "pretrain_original"), split, None),
              "sft": measure(latest_checkpoint(work / "sft"), {}, chat)}  # SFT: the chat NLL only (CPU time)
    runs = {name: run_summary(work / name) for name in ("pretrain", "pretrain_original", "sft", "reward")}
    text = render(models, runs, read_timings(work / "timings.tsv"))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text, encoding="utf-8")
    (work / "summary.json").write_text(json.dumps({"models": models, "runs": runs}, indent=1), encoding="utf-8")
    print(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
