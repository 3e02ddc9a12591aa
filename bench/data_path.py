"""Data path benchmark: throughput, memory while streaming, resume cost.

(a) tokens/s of shards → packed rows (ours) vs Hugging Face `datasets` streaming JSON over the same shards
    with the same tokenizer, batched the same way, packed into the same rows (the old project's reader);
(b) peak RSS growth while streaming every record of ≥ 500 MB of generated shards;
(c) time to resume a stream at record offset 1 vs 1,000,000 (first record after load_state_dict).

Prints `name: ours X, baseline Y, ratio Z`. Generated data lives in bench/out/ (ignored by git).
Usage: python bench/data_path.py [--records 1200000] [--tokens 2000000]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from llms_trainer.data import shards as shards_module  # noqa: E402
from llms_trainer.data.compress import compress_sources, expand_inputs  # noqa: E402
from llms_trainer.data.pipeline import PretrainData, PretrainSpec, ResumableLoader  # noqa: E402
from llms_trainer.data.shards import list_shards, read_manifest  # noqa: E402
from llms_trainer.data.stream import SourceStream  # noqa: E402

TOKENIZER = ROOT / "configs/tokenizers/demo_base"
SEQ_LENGTH, BATCH_ROWS, TOKENIZE_BATCH = 512, 8, 64


def generate_corpus(path: Path, records: int, seed: int = 0) -> None:
    """~450-byte records of English and Chinese sentences built from the bundled samples' words."""
    rng = random.Random(seed)
    words: list[str] = []
    for sample in sorted((ROOT / "data/shuffled_data/pretrain").glob("*.jsonl")):
        for line in sample.read_text(encoding="utf-8").splitlines():
            text = " ".join(v for v in json.loads(line).values() if isinstance(v, str))
            words.extend(text.split())
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 24))) for _ in range(5000)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(records):
            text = " ".join(rng.choice(sentences) for _ in range(3))[:440]
            fh.write(json.dumps({"text": f"{i} {text}"}, ensure_ascii=False) + "\n")


def ensure_shards(out: Path, records: int) -> Path:
    source = out / "shards" / "bench"
    if source.exists() and read_manifest(source)["records"] == records:
        return source
    raw = out / "bench.jsonl"
    t0 = time.perf_counter()
    generate_corpus(raw, records)
    compress_sources(expand_inputs([str(raw)], None), out / "shards", shard_mb=32)
    raw.unlink()
    print(f"generated and compressed {records} records in {time.perf_counter() - t0:.0f}s", flush=True)
    return source


def ours_tokens_per_s(source: Path, tokenizer, token_budget: int) -> float:
    spec = PretrainSpec(sources={"bench": list_shards(source)}, weights={"bench": 1.0}, seq_length=SEQ_LENGTH,
                        batch_size=BATCH_ROWS, tokenize_batch_docs=TOKENIZE_BATCH)
    start, tokens = time.perf_counter(), 0
    for batch in ResumableLoader(PretrainData(spec, tokenizer)):
        tokens += int(batch["attention_mask"].sum())
        if tokens >= token_budget:
            break
    return tokens / (time.perf_counter() - start)


def datasets_tokens_per_s(source: Path, tokenizer, token_budget: int) -> float:
    """The old reader: datasets streaming JSON (zstd), batched tokenisation, concatenation into rows."""
    import datasets
    import torch

    datasets.disable_progress_bars()
    bos, eos = [tokenizer.bos_token_id], [tokenizer.eos_token_id]

    def encode(texts: list[str]) -> list[list[int]]:  # the old project's call: tokenizer(texts)
        return [bos + ids + eos for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    files = [str(s.path) for s in list_shards(source)]
    start, tokens, pending, rows = time.perf_counter(), 0, [], []
    stream = datasets.load_dataset("json", data_files=files, split="train", streaming=True)
    stream = stream.map(lambda b: {"input_ids": encode(b["text"])}, batched=True, batch_size=TOKENIZE_BATCH,
                        remove_columns=["text"])
    for example in stream:
        pending.extend(example["input_ids"])
        while len(pending) >= SEQ_LENGTH:
            rows.append(pending[:SEQ_LENGTH])
            pending = pending[SEQ_LENGTH:]
            if len(rows) == BATCH_ROWS:
                batch = torch.tensor(rows)
                tokens += batch.numel()
                rows = []
        if tokens >= token_budget:
            break
    return tokens / (time.perf_counter() - start)


def streaming_rss(source: Path) -> tuple[float, float, int]:
    """RSS (MB) before, and the peak sampled every 20 ms while reading every record once; records read."""
    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss / 2**20
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], process.memory_info().rss / 2**20)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    count = sum(1 for _ in SourceStream(list_shards(source), max_epochs=1))
    done.set()
    sampler.join()
    return before, peak[0], count


def resume_seconds(source: Path, offset: int, repeats: int = 5) -> float:
    """Median time to the first record after resuming at epoch position `offset` (shard hashes re-checked)."""
    shards = list_shards(source)
    probe = SourceStream(shards)
    order, position = probe._order(0), 0
    for shard_pos, index in enumerate(order):
        if position + shards[index].records > offset:
            state = {"epoch": 0, "shard_pos": shard_pos, "line": offset - position, "taken": 0}
            break
        position += shards[index].records
    times = []
    for _ in range(repeats):
        shards_module._verified.clear()
        start = time.perf_counter()
        stream = SourceStream(shards)
        stream.load_state_dict(state)
        next(iter(stream))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_200_000, help="generated records (≈450 B each)")
    parser.add_argument("--tokens", type=int, default=2_000_000, help="tokens per throughput run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/out/data_path")
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER, help="HF tokenizer directory")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer))
    source = ensure_shards(args.out, args.records)
    manifest = read_manifest(source)
    print(f"shards: {len(manifest['shards'])}, raw {manifest['raw_bytes'] / 2**20:.0f} MB, "
          f"zst {manifest['zst_bytes'] / 2**20:.0f} MB, {manifest['records']} records")

    before, peak, count = streaming_rss(source)
    print(f"rss_streaming: start {before:.0f} MB, peak {peak:.0f} MB, growth {peak - before:.0f} MB "
          f"over {count} records (goal: growth ≤ 300 MB)")

    ours = ours_tokens_per_s(source, tokenizer, args.tokens)
    base = datasets_tokens_per_s(source, tokenizer, args.tokens)
    print(f"tokens_per_s: ours {ours:,.0f}, baseline {base:,.0f}, ratio {ours / base:.2f} (goal ≥ 3)")

    far_offset = min(1_000_000, manifest["records"] - 1)
    near, far = resume_seconds(source, 1), resume_seconds(source, far_offset)
    print(f"resume_seconds: ours(offset {far_offset}) {far:.4f}, baseline(offset 1) {near:.4f}, "
          f"ratio {far / near:.2f} (goal ≤ 2)")


if __name__ == "__main__":
    main()
