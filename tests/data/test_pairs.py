"""Preference pairs: reading (bad lines, shards), encoding (template, truncation, identical pairs), the
per-process stream (dealing, epochs, resume)."""

from __future__ import annotations

import numpy as np
import pytest

from llms_trainer.data.compress import SourceInput, compress_sources
from llms_trainer.data.pairs import BadRecordError, PairStream, encode_pairs, encode_sequences, read_pairs
from tests.helpers import write_jsonl

GOOD = {"prompt": "What moves?", "selected": " The optimizer.", "rejected": " Nothing."}


def test_a_bad_line_is_named_by_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [GOOD, GOOD, {"prompt": "p", "selected": "s"}])
    with pytest.raises(BadRecordError, match=rf"{path}:3: no preference pair"):
        read_pairs([str(path)])
    path = write_jsonl(tmp_path / "b.jsonl", [GOOD, '{"prompt": "p",'])
    with pytest.raises(BadRecordError, match=rf"{path}:2: not JSON"):
        read_pairs([str(path)])
    path = write_jsonl(tmp_path / "c.jsonl", [{**GOOD, "margin": "big"}])
    with pytest.raises(BadRecordError, match=rf"{path}:1: margin must be a finite number, got 'big'"):
        read_pairs([str(path)])


def test_skip_counts_bad_lines_per_file_and_accepts_chosen(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [GOOD, "not json", "", {"prompt": "p", "chosen": "c", "rejected": "r"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "p"}, {"prompt": "x", "selected": "y", "rejected": "z"},
                                           {**GOOD, "margin": True}])
    pairs, report = read_pairs([str(tmp_path / "*.jsonl")], on_bad_record="skip")
    assert [(p.prompt, p.selected, p.rejected) for p in pairs] == [
        ("What moves?", " The optimizer.", " Nothing."), ("p", "c", "r"), ("x", "y", "z")]
    assert pairs[1].where == f"{a}:4"
    assert report.pairs == {str(a): 2, str(b): 1} and report.bad == {str(a): 1, str(b): 2}


def test_pairs_are_read_from_reward_shards_like_from_jsonl(tmp_path):
    records = [{**GOOD, "prompt": f"q{i}", "margin": i / 2} for i in range(7)]
    src = write_jsonl(tmp_path / "raw" / "prefs.jsonl", records)
    compress_sources([SourceInput("prefs", [src])], tmp_path / "shards", mode="reward", shard_records=3)
    from_jsonl, _ = read_pairs([str(src)])
    from_dir, report = read_pairs([str(tmp_path / "shards" / "prefs")])
    from_glob, _ = read_pairs([str(tmp_path / "shards" / "prefs" / "*.jsonl.zst")])
    strip = [(p.prompt, p.selected, p.rejected, p.margin) for p in from_jsonl]
    assert [(p.prompt, p.selected, p.rejected, p.margin) for p in from_dir] == strip
    assert [(p.prompt, p.selected, p.rejected, p.margin) for p in from_glob] == strip
    assert len(report.pairs) == 3 and from_dir[4].where.endswith("part-00002.jsonl.zst:2")


def test_plain_concatenation_one_bos_and_eos_appended(tiny_tokenizer):
    ids = encode_sequences(tiny_tokenizer, ["the model reads"], [" data from sources"], seq_length=64)[0]
    text_ids = tiny_tokenizer("the model reads data from sources", add_special_tokens=False)["input_ids"]
    assert ids == [tiny_tokenizer.bos_token_id] + text_ids + [tiny_tokenizer.eos_token_id]


def test_chat_template_renders_prompt_as_user_and_response_as_assistant(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from llms_trainer.data.chat_format import render_chat
    from llms_trainer.tokenizer.chat import add_chat_tokens

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    add_chat_tokens(tokenizer)
    ids = encode_sequences(tokenizer, ["What moves?"], ["The optimizer."], seq_length=64)[0]
    turns = [{"role": "user", "content": "What moves?"}, {"role": "assistant", "content": "The optimizer."}]
    expected = tokenizer(render_chat(turns, tokenizer.bos_token), add_special_tokens=False)["input_ids"]
    assert ids == expected + [tokenizer.eos_token_id]
    assert ids.count(tokenizer.bos_token_id) == 1


def test_truncation_keeps_the_start_and_drops_pairs_cut_to_identical(tiny_tokenizer):
    long_prompt = "the model reads data " * 20
    full = encode_sequences(tiny_tokenizer, ["short question"], [" the optimizer updates weights"], 200)[0]
    cut = encode_sequences(tiny_tokenizer, ["short question"], [" the optimizer updates weights"], 6)[0]
    assert cut == full[:5] + [tiny_tokenizer.eos_token_id]
    from llms_trainer.data.pairs import Pair

    pairs = [Pair("the model", " yes", " no", None, "x:1"), Pair(long_prompt, " yes", " no", 1.5, "x:2"),
             Pair("same", " answer", " answer", None, "x:3")]
    encoded = encode_pairs(tiny_tokenizer, pairs, seq_length=16)
    assert len(encoded) == 1 and encoded.identical == 2
    assert encoded.margins.tolist() == [0.0]  # the data has margins: a pair without one counts as 0
    assert encoded.row(0).tolist()[-1] == encoded.row(1).tolist()[-1] == tiny_tokenizer.eos_token_id


def _pairs(tokenizer, n: int):
    from llms_trainer.data.pairs import Pair

    return encode_pairs(tokenizer, [Pair(f"question {i}", f" yes {i}", f" no {i}", None, "") for i in range(n)], 32)


def _ids(stream: PairStream, batches: int) -> list[list[tuple]]:
    """Per micro-batch, the (chosen row) token tuples it holds."""
    out = []
    for _ in range(batches):
        batch = stream.next_batch()
        half = batch["input_ids"].shape[0] // 2
        out.append([tuple(row[mask.bool()].tolist()) for row, mask in
                    zip(batch["input_ids"][:half], batch["attention_mask"][:half], strict=True)])
    return out


def test_two_processes_share_the_pairs_of_one_process_step_by_step(tiny_tokenizer):
    pairs = _pairs(tiny_tokenizer, 10)
    one = _ids(PairStream(pairs, 2, 0, 1, seed=3, max_epochs=None, fill=0), 10)
    ranks = [_ids(PairStream(pairs, 1, r, 2, seed=3, max_epochs=None, fill=0), 10) for r in range(2)]
    assert [sorted(b) for b in one] == [sorted(ranks[0][i] + ranks[1][i]) for i in range(10)]
    epoch = [row for batch in one[:5] for row in batch]
    assert len(set(epoch)) == 10  # one epoch holds every pair once
    assert epoch != [row for batch in one[5:] for row in batch]  # and the next one another order


def test_epochs_bound_the_stream_and_resume_continues_exactly(tiny_tokenizer):
    pairs = _pairs(tiny_tokenizer, 10)
    stream = PairStream(pairs, 3, 1, 2, seed=5, max_epochs=2, fill=0)
    assert stream.total_batches() == 2 * 10 // (2 * 3)
    reference = _ids(PairStream(pairs, 3, 1, 2, seed=5, max_epochs=2, fill=0), 3)
    first = _ids(stream, 1)
    state = stream.state_dict()
    resumed = PairStream(pairs, 3, 1, 2, seed=5, max_epochs=2, fill=0)
    resumed.load_state_dict(state)
    assert first + _ids(resumed, 2) == reference
    assert resumed.next_batch() is None and resumed.epochs() == pytest.approx(1.8)
    other = PairStream(pairs, 3, 0, 4, seed=5, max_epochs=2, fill=0)
    with pytest.raises(ValueError, match="world_size 2 → 4"):
        other.load_state_dict(state)


def test_margins_ride_along_with_their_pairs(tiny_tokenizer):
    from llms_trainer.data.pairs import Pair

    pairs = encode_pairs(tiny_tokenizer, [Pair(f"q{i}", " a", f" b{i}", float(i), "") for i in range(6)], 32)
    batch = PairStream(pairs, 6, 0, 1, seed=0, max_epochs=1, fill=0).next_batch()
    rejected = [tiny_tokenizer.decode(row[mask.bool()], skip_special_tokens=True)
                for row, mask in zip(batch["input_ids"][6:], batch["attention_mask"][6:], strict=True)]
    assert batch["margin"].tolist() == [float(text.split("b")[-1]) for text in rejected]
    assert sorted(batch["margin"].tolist()) == list(np.arange(6.0))


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_a_models_own_chat_template_renders_the_pair_and_typed_tokens_stay_text(tiny_tokenizer_dir):
    """An instruct model's template (ChatML here, no built-in chat tokens): ids equal the tokenizer's own
    render of the conversation, and `<|im_end|>` typed in a response is text, not an end of turn."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    turns = [{"role": "user", "content": "What moves?"}, {"role": "assistant", "content": "The optimizer."}]
    rendered = tokenizer.apply_chat_template(turns, tokenize=True)
    rendered = list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)
    ids = encode_sequences(tokenizer, ["What moves?"], ["The optimizer."], seq_length=64)[0]
    assert ids == [tokenizer.bos_token_id] + rendered + [tokenizer.eos_token_id]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    typed = encode_sequences(tokenizer, ["What moves?"], ["done<|im_end|> more"], seq_length=64)[0]
    assert typed.count(end) == 2  # the template's two ends of turn, not the typed one
    assert "<|im_end|>" in tokenizer.decode(typed[len(ids) - 6:-1])
