"""Huge SFT record benchmark: encoding a conversation whose reply is one 5 MB line, with the content bound
(`ChatEncoder.max_content_chars`: contents cut to 2 × seq_length × longest-token characters before encoding)
vs without it (the whole content encoded, then the row cut at seq_length); and vs a reply exactly as long as the
bound, and the longest bundled reply.

Reply text: the bundled SFT samples' assistant replies joined until --megabytes of text. Tokenizer:
configs/tokenizers/demo_base with the chat tokens added at runtime. Both sides give the same ids (checked).
Prints `name: ours X, baseline Y, ratio Z` (ours: with the bound, baseline: without).
Usage: python bench/huge_record.py [--megabytes 5] [--seq-length 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from transformers import AutoTokenizer  # noqa: E402

from llms_trainer.data.records import read_chat  # noqa: E402
from llms_trainer.data.sft import ChatEncoder  # noqa: E402
from llms_trainer.tokenizer.chat import add_chat_tokens_to_dir  # noqa: E402

SAMPLES = ROOT / "data/shuffled_data/sft"


def replies() -> list[str]:
    """Assistant contents of the bundled SFT samples."""
    out = []
    for path in sorted(SAMPLES.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            turns = read_chat(json.loads(line)) if line.strip() else "blank"
            if not isinstance(turns, str):
                out += [t["content"] for t in turns if t["role"] == "assistant"]
    return out


def seconds(encoder: ChatEncoder, turns: list[dict], repeats: int) -> tuple[float, object]:
    """Best of `repeats` wall-clock seconds for one `encode`, and its result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = encoder.encode([turns])
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=5.0)
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        add_chat_tokens_to_dir(ROOT / "configs/tokenizers/demo_base", Path(tmp) / "chat")
        tokenizer = AutoTokenizer.from_pretrained(str(Path(tmp) / "chat"))
    texts = replies()
    huge, size = [], 0
    while size < args.megabytes * 1e6:
        for text in texts:
            huge.append(text)
            size += len(text.encode("utf-8")) + 1
    reply = "\n".join(huge)
    ours = ChatEncoder(tokenizer, args.seq_length)
    baseline = ChatEncoder(tokenizer, args.seq_length)
    baseline.max_content_chars = len(reply) + 1  # nothing cut: the whole content is encoded
    question = {"role": "user", "content": "Summarise everything you know."}
    huge_turns = [question, {"role": "assistant", "content": reply}]
    ours_s, ours_ids = seconds(ours, huge_turns, args.repeats)
    base_s, base_ids = seconds(baseline, huge_turns, args.repeats)
    assert ours_ids == base_ids, "the bound changed the kept ids"
    longest = max(texts, key=len)
    normal_s, _ = seconds(ours, [question, {"role": "assistant", "content": longest}], args.repeats)
    at_bound = [question, {"role": "assistant", "content": reply[:ours.max_content_chars]}]
    bound_s, _ = seconds(ours, at_bound, args.repeats)
    print(f"reply: {len(reply.encode('utf-8')) / 1e6:.1f} MB, {len(reply):,} characters; bound "
          f"{ours.max_content_chars:,} characters (seq_length {args.seq_length}); kept ids identical")
    print(f"seconds per encode of the huge conversation: ours {ours_s:.4f}, baseline {base_s:.4f}, "
          f"ratio {base_s / ours_s:.0f}x faster")
    print(f"seconds per encode, huge vs a reply of exactly the bound: ours {ours_s:.4f}, baseline {bound_s:.4f}, "
          f"ratio {ours_s / bound_s:.2f}")
    print(f"seconds per encode, huge vs the longest bundled reply ({len(longest):,} characters): "
          f"ours {ours_s:.4f}, baseline {normal_s:.4f}, ratio {ours_s / normal_s:.0f}")

if __name__ == "__main__":
    main()
