"""SFT packing benchmark: whole conversations packed into rows vs one conversation per row (dynamic padding).

On the bundled SFT samples (data/shuffled_data/sft/*.jsonl, repeated to ≥ --conversations, compressed with
`--mode sft` into bench/out/sft_shards/), one epoch through `build_sft_loader` with `batch_size` rows of at
most `seq_length` tokens per batch in both modes (the same token budget per batch):

(a) fraction of row slots holding a trained (label-bearing) token;
(b) fraction of row slots holding a real (non-pad) token;
(c) trained tokens/s of a tiny Llama forward + backward (sdpa, fp32, same weights), timed in pairs: one
    packed batch, then the next padded batches holding as many trained tokens (so load drift on a shared
    machine hits both sides alike).

Tokenizer: configs/tokenizers/demo_base with the chat tokens added at runtime (into a temporary dir).
Prints `name: ours X, baseline Y, ratio Z` (ours: packing, baseline: dynamic padding).
Usage: python bench/sft_packing.py [--conversations 2000] [--seq-length 2048] [--batch-size 8] [--timed-batches 12]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from llms_trainer.data.compress import compress_sources, expand_inputs  # noqa: E402
from llms_trainer.data.mixing import natural_weights  # noqa: E402
from llms_trainer.data.packing import IGNORE_INDEX, model_inputs, real_tokens  # noqa: E402
from llms_trainer.data.sft import SFTSpec, build_sft_loader  # noqa: E402
from llms_trainer.data.shards import list_shards  # noqa: E402
from llms_trainer.tokenizer.chat import add_chat_tokens_to_dir  # noqa: E402

SAMPLES = ROOT / "data/shuffled_data/sft"
OUT = ROOT / "bench/out"


def build_shards(conversations: int) -> dict[str, list]:
    """Each bundled source repeated so that all together hold ≥ `conversations` records."""
    files = sorted(SAMPLES.glob("*.jsonl"))
    lines = {f.stem: [x for x in f.read_text(encoding="utf-8").splitlines() if x.strip()] for f in files}
    repeat = math.ceil(conversations / sum(map(len, lines.values())))
    raw = OUT / "sft_raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, rows in lines.items():
        (raw / f"{name}.jsonl").write_text("\n".join(rows * repeat) + "\n", encoding="utf-8")
    compress_sources(expand_inputs([str(raw / "*.jsonl")], None), OUT / "sft_shards", mode="sft")
    return {name: list_shards(OUT / "sft_shards" / name) for name in lines}


def chat_tokenizer(tmp: Path):
    add_chat_tokens_to_dir(ROOT / "configs/tokenizers/demo_base", tmp / "chat")
    return AutoTokenizer.from_pretrained(str(tmp / "chat"))


def epoch_batches(sources: dict, tokenizer, pack: bool, seq_length: int, batch_size: int) -> list[dict]:
    spec = SFTSpec(sources=sources, weights=natural_weights(sources), seq_length=seq_length, batch_size=batch_size,
                   pack=pack, max_epochs=1, seed=0)
    return list(build_sft_loader(spec, tokenizer))


def targets(batch: dict) -> int:
    """Trained next-token targets of a batch."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def slot_fractions(batches: list[dict]) -> tuple[float, float]:
    """(label-bearing slots / all slots, real-token slots / all slots)."""
    slots = sum(b["input_ids"].numel() for b in batches)
    labelled = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    return labelled / slots, sum(real_tokens(b) for b in batches) / slots


def paired_rates(model, packed: list[dict], padded: list[dict]) -> tuple[float, float, str]:
    """Trained targets/s of packed and padded batches timed alternately, and a summary line."""
    seconds, trained, used = [0.0, 0.0], [0, 0], 0
    rest = iter(padded)
    for batch in packed:
        seconds[0] += train_seconds(model, [batch])
        trained[0] += targets(batch)
        chunk = []
        while trained[1] + sum(map(targets, chunk)) < trained[0]:
            chunk.append(next(rest))
        seconds[1] += train_seconds(model, chunk)
        trained[1] += sum(map(targets, chunk))
        used += len(chunk)
    summary = (f"timed: {len(packed)} packed batches ({trained[0]} targets) in {seconds[0]:.1f} s, "
               f"{used} padded batches ({trained[1]} targets) in {seconds[1]:.1f} s")
    return trained[0] / seconds[0], trained[1] / seconds[1], summary


def train_seconds(model, batches: list[dict]) -> float:
    """Seconds of forward + backward (summed target loss) over all batches."""
    start = time.perf_counter()
    for batch in batches:
        logits = model(**model_inputs(batch)).logits
        targets = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE_INDEX)
        F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum").backward()
        model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def line(name: str, ours: float, baseline: float, digits: int = 3) -> str:
    return f"{name}: ours {ours:.{digits}f}, baseline {baseline:.{digits}f}, ratio {ours / baseline:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--timed-batches", type=int, default=12, help="packed batches timed (padded: same targets)")
    args = parser.parse_args()
    sources = build_shards(args.conversations)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = chat_tokenizer(Path(tmp))
    packed = epoch_batches(sources, tokenizer, True, args.seq_length, args.batch_size)
    padded = epoch_batches(sources, tokenizer, False, args.seq_length, args.batch_size)
    (p_lab, p_real), (d_lab, d_real) = slot_fractions(packed), slot_fractions(padded)
    conversations = sum(int(b["input_ids"].shape[0]) for b in padded)
    print(f"{conversations} conversations, seq_length {args.seq_length}, {args.batch_size} rows per batch: "
          f"{len(packed)} packed batches, {len(padded)} padded batches, "
          f"{sum(map(targets, packed))} / {sum(map(targets, padded))} trained targets")
    print(line("label-bearing fraction of row slots", p_lab, d_lab))
    print(line("row slots used (real tokens)", p_real, d_real))

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=args.seq_length,
                         attn_implementation="sdpa")
    model = LlamaForCausalLM(config).train()
    train_seconds(model, packed[:1] + padded[:1])  # warm-up
    ours, baseline, summary = paired_rates(model, packed[: args.timed_batches], padded)
    print(summary)
    print(line("trained tokens/s, tiny Llama forward+backward", ours, baseline, 0))


if __name__ == "__main__":
    main()
