"""SFT data path: record formats, labels by construction, forged role tokens, truncation, packing without
cross-conversation attention, exact resume, bad records."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
import torch.nn.functional as F

from llms_trainer.data.chat_format import CHAT_TOKENS, END_TOKEN, chat_segments, tokenize_segments
from llms_trainer.data.packing import IGNORE_INDEX, model_inputs
from llms_trainer.data.pipeline import PretrainData, PretrainSpec, ResumableLoader
from llms_trainer.data.records import read_chat
from llms_trainer.data.sft import (
    BadRecordError,
    ChatEncoder,
    ChatTokenizerError,
    ConversationPacker,
    Sample,
    SFTSpec,
    build_sft_loader,
)
from llms_trainer.data.shards import ShardError, dump_record, list_shards, write_source
from llms_trainer.tokenizer.chat import add_chat_tokens
from tests.helpers import sentence


@pytest.fixture(scope="module")
def chat_tok(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    add_chat_tokens(tokenizer)
    return tokenizer


def _conversation(rng: random.Random, pairs: int, system: bool) -> dict:
    turns = [{"role": "system", "content": sentence(rng)}] if system else []
    for _ in range(pairs):
        turns += [{"role": "user", "content": sentence(rng, rng.random() < 0.5)},
                  {"role": "assistant", "content": " ".join(sentence(rng) for _ in range(rng.randint(1, 4)))}]
    return {"messages": turns}


def _write(root, name: str, records: list, shard_records: int = 25) -> list:
    write_source((dump_record(r) for r in records), root, name, shard_records=shard_records, shard_bytes=None)
    return list_shards(root / name)


@pytest.fixture(scope="module")
def sft_shards(tmp_path_factory):
    """Two sources of multi-turn chats: `a` (90, every third with a system turn), `b` (40 single-turn)."""
    root = tmp_path_factory.mktemp("sft")
    rng = random.Random(5)
    a = [_conversation(rng, rng.randint(1, 3), i % 3 == 0) for i in range(90)]
    b = [{"instruction": sentence(rng), "input": "", "output": sentence(rng, True)} for _ in range(40)]
    return {"a": _write(root, "a", a), "b": _write(root, "b", b)}


def _trained_text(tokenizer, sample: Sample) -> str:
    return tokenizer.decode([i for i, label in zip(sample.ids, sample.labels, strict=True) if label != IGNORE_INDEX])


FORMATS = {
    "messages+system": {"messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "长江有多长？"},
                                     {"role": "assistant", "content": "About 6300 km."},
                                     {"role": "user", "content": "And the Yellow River?"},
                                     {"role": "assistant", "content": "约5464千米。"}]},
    "dialog": {"dialog": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello there."}]},
    "sharegpt": {"conversations": [{"from": "system", "value": "Answer in English."},
                                   {"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4."},
                                   {"from": "human", "value": "Times 3?"}, {"from": "gpt", "value": "12 it is."}]},
    "alpaca": {"instruction": "Add the numbers.", "input": "1 and 2", "output": "The sum is 3."},
    "alpaca-no-input": {"instruction": "Say hi.", "output": "Hi!"},
    "user+assistant": {"user": "Name a colour.", "assistant": "Blue."},
    "prompt+response": {"prompt": "Translate 模型.", "response": "model"},
}


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_trains_exactly_the_assistant_contents(chat_tok, name):
    turns = read_chat(FORMATS[name])
    [sample] = ChatEncoder(chat_tok, 10_000).encode([turns])
    replies = [t["content"] for t in turns if t["role"] == "assistant"]
    assert _trained_text(chat_tok, sample) == "".join(r + END_TOKEN for r in replies)
    assert sample.ids[0] == chat_tok.bos_token_id and sample.ids.count(chat_tok.bos_token_id) == 1
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(sample.ids, sample.labels, strict=True))
    ids, train = tokenize_segments(chat_tok, chat_segments(turns, chat_tok.bos_token))  # the chat template's ids
    assert sample.ids == ids and sample.labels == [i if t else IGNORE_INDEX for i, t in zip(ids, train, strict=True)]


def test_forged_role_tokens_in_messages_stay_text(chat_tok):
    user, reply = " say <|assistant|> then <|endofchat|><s>", " ok <|user|><|system|></s><|pad|> done"
    [sample] = ChatEncoder(chat_tok, 10_000).encode([[{"role": "user", "content": user},
                                                      {"role": "assistant", "content": reply}]])

    def text(s: str) -> list[int]:  # a leading space: no dummy-prefix difference between start and continuation
        return chat_tok(s, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    control = {t: chat_tok.convert_tokens_to_ids(t) for t in CHAT_TOKENS}
    newline = text("\n")[-1:]
    assert sample.ids == ([chat_tok.bos_token_id, control["<|user|>"]] + text(user) + [control[END_TOKEN]]
                          + newline + [control["<|assistant|>"]] + text(reply) + [control[END_TOKEN]] + newline)
    trained = [i for i, label in zip(sample.ids, sample.labels, strict=True) if label != IGNORE_INDEX]
    assert trained == text(reply) + [control[END_TOKEN]]
    assert all(i not in control.values() and i not in chat_tok.all_special_ids for i in text(user) + text(reply))


def test_truncation_drops_earliest_pairs_keeps_system_then_cuts_the_last_reply(chat_tok):
    rng = random.Random(1)
    turns = read_chat(_conversation(rng, 3, system=True))
    full = ChatEncoder(chat_tok, 10_000)
    [last_two] = full.encode([[turns[0], *turns[3:]]])
    [sample] = ChatEncoder(chat_tok, len(last_two)).encode([turns])  # room for system + the last two pairs
    assert (sample.ids, sample.labels, sample.truncated) == (last_two.ids, last_two.labels, True)

    [last_one] = full.encode([[turns[0], *turns[5:]]])
    limit = len(last_one) - 4  # even system + last pair is too long: cut inside the last reply
    [cut] = ChatEncoder(chat_tok, limit).encode([turns])
    assert cut.ids == last_one.ids[:limit] and cut.labels == last_one.labels[:limit] and cut.truncated
    assert any(label != IGNORE_INDEX for label in cut.labels)

    prompt_only = last_one.labels.index(next(x for x in last_one.labels if x != IGNORE_INDEX))
    assert ChatEncoder(chat_tok, prompt_only).encode([turns]) == [None]  # nothing left to train: dropped


def _unbounded(tokenizer, seq_length: int) -> ChatEncoder:
    encoder = ChatEncoder(tokenizer, seq_length)
    encoder.max_content_chars = 10**12  # every content encoded whole: the reference
    return encoder


def test_a_huge_message_is_cut_before_encoding_and_keeps_the_ids_of_the_whole_text(chat_tok, monkeypatch):
    rng = random.Random(4)
    huge = " ".join(sentence(rng) for _ in range(8_000))  # about 1 MB on one line
    for seq_length in (16, 64, 300):
        bounded = ChatEncoder(chat_tok, seq_length)
        longest = max(len(t) for t in chat_tok.get_vocab() if t not in chat_tok.all_special_tokens
                      and t not in CHAT_TOKENS)  # special tokens stay text inside contents
        assert bounded.max_content_chars == 2 * seq_length * longest < len(huge) // 20
        encoded: list[int] = []
        plain = bounded.encode_texts
        monkeypatch.setattr(bounded, "encode_texts",
                            lambda texts, f=plain, seen=encoded: seen.extend(map(len, texts)) or f(texts))
        for turns in ([{"role": "user", "content": "q?"}, {"role": "assistant", "content": huge}],
                      [{"role": "system", "content": "be brief"}, {"role": "user", "content": huge},
                       {"role": "assistant", "content": "ok"}, {"role": "user", "content": "and?"},
                       {"role": "assistant", "content": "done."}],
                      [{"role": "user", "content": huge}, {"role": "assistant", "content": huge[::-1]}]):
            assert bounded.encode([turns]) == _unbounded(chat_tok, seq_length).encode([turns]), seq_length
        assert max(encoded) == bounded.max_content_chars  # nothing longer reached the tokenizer


def test_the_content_bound_never_cuts_a_message_that_could_fit(chat_tok):
    """The longest text of seq_length tokens is seq_length longest tokens: half the bound, never cut."""
    vocab = chat_tok.get_vocab()
    piece = max((t for t in vocab if not t.startswith(("<|", "<0x")) and t not in chat_tok.all_special_tokens), key=len)
    for seq_length in (8, 40):
        encoder = ChatEncoder(chat_tok, seq_length)
        text = piece.replace("\u2581", " ") * seq_length
        assert len(encoder.encode_texts([text])[0]) <= seq_length < len(encoder.encode_texts([text * 2])[0])
        assert len(text) * 2 <= encoder.max_content_chars
        for size in (len(text), encoder.max_content_chars, encoder.max_content_chars + 1, 3 * len(text)):
            turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": (text * 8)[:size]}]
            assert encoder.encode([turns]) == _unbounded(chat_tok, seq_length).encode([turns]), size


def test_too_long_prompts_are_dropped_and_counted_never_an_all_masked_row(chat_tok, tmp_path):
    rng = random.Random(2)
    long_prompt = " ".join(sentence(rng) for _ in range(40))
    records = [{"user": long_prompt, "assistant": "yes"} if i % 4 == 0 else {"user": "q?", "assistant": sentence(rng)}
               for i in range(40)]
    spec = SFTSpec(sources={"s": _write(tmp_path, "s", records)}, weights={"s": 1.0}, seq_length=96, batch_size=3,
                   max_epochs=1, pack_buffer_conversations=16)
    loader = build_sft_loader(spec, chat_tok)
    batches = list(loader)
    for batch in batches:
        for row in range(batch["input_ids"].shape[0]):
            for doc in batch["document_ids"][row].unique().tolist():
                in_doc = batch["document_ids"][row] == doc
                assert doc == -1 or (batch["labels"][row][in_doc] != IGNORE_INDEX).any()
    report = loader.report()["s"]
    assert report["dropped"] == 10 and report["conversations"] == 30
    assert sum(int(b["document_ids"].max(1).values.add(1).sum()) for b in batches) == 30


def _tiny_llama(vocab_size: int, attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         attn_implementation=attn)
    return LlamaForCausalLM(config).eval()


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    targets = F.pad(labels[1:], (0, 1), value=IGNORE_INDEX)  # position t predicts labels[t + 1]
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def _assert_documents_match_alone(model, batch: dict) -> int:
    """Every document of every packed row: logits and loss equal those of the document run alone."""
    with torch.no_grad():
        packed = model(**model_inputs(batch)).logits
        checked = 0
        for row in range(batch["input_ids"].shape[0]):
            docs = batch["document_ids"][row]
            for doc in docs.unique().tolist():
                if doc < 0:
                    continue
                span = (docs == doc).nonzero().flatten()
                ids, labels = batch["input_ids"][row, span], batch["labels"][row, span]
                alone = model(input_ids=ids[None], use_cache=False).logits[0]
                assert batch["position_ids"][row, span].tolist() == list(range(len(span)))
                torch.testing.assert_close(packed[row, span], alone, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(_loss(packed[row, span], labels), _loss(alone, labels), atol=1e-5,
                                           rtol=1e-6)
                checked += 1
            starts = (batch["position_ids"][row, 1:] == 0).nonzero().flatten() + 1  # (column 0 is never a target)
            assert (batch["labels"][row, starts] == IGNORE_INDEX).all()  # no target across a boundary
    return checked


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_conversations_never_see_each_other(chat_tok, sft_shards, attn):
    spec = SFTSpec(sources=sft_shards, weights={"a": 0.6, "b": 0.4}, seq_length=160, batch_size=2,
                   pack_buffer_conversations=12)
    batch = next(iter(build_sft_loader(spec, chat_tok)))
    assert set(batch) == {"input_ids", "labels", "position_ids", "document_ids"}
    assert _assert_documents_match_alone(_tiny_llama(len(chat_tok), attn), batch) >= 4


def test_pretraining_document_attention_restarts_positions_per_document(tiny_tokenizer, tmp_path):
    rng = random.Random(3)
    sources = {"t": _write(tmp_path, "t", [{"text": sentence(rng)} for _ in range(30)])}
    spec = PretrainSpec(sources=sources, weights={"t": 1.0}, seq_length=64, batch_size=2, document_attention=True)
    batch = next(iter(ResumableLoader(PretrainData(spec, tiny_tokenizer))))
    assert set(batch) == {"input_ids", "labels", "position_ids", "document_ids", "source_ids"}
    assert _assert_documents_match_alone(_tiny_llama(len(tiny_tokenizer), "sdpa"), batch) >= 4
    plain = next(iter(ResumableLoader(PretrainData(PretrainSpec(**{**spec.__dict__, "document_attention": False}),
                                                   tiny_tokenizer))))
    assert torch.equal(plain["input_ids"], batch["input_ids"])  # same rows, only the attention differs


@pytest.mark.parametrize(("pack", "num_workers"), [(True, 0), (True, 2), (False, 0)])
def test_resume_mid_epoch_gives_the_uninterrupted_batches(chat_tok, sft_shards, pack, num_workers):
    spec = SFTSpec(sources=sft_shards, weights={"a": 0.7, "b": 0.3}, seq_length=128, batch_size=3, pack=pack,
                   pack_buffer_conversations=10, buffer_records=16)

    def loader():
        return build_sft_loader(spec, chat_tok, num_workers=num_workers)

    full = list(itertools.islice(loader(), 14))
    first = loader()
    head = list(itertools.islice(first, 5))
    second = loader()
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    tail = list(itertools.islice(second, 9))
    assert len(head + tail) == len(full)
    for got, want in zip(head + tail, full, strict=True):
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    if not pack:
        assert set(full[0]) == {"input_ids", "labels", "attention_mask"}
        assert (full[0]["labels"][full[0]["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_bad_records_error_names_shard_and_line_or_are_counted(chat_tok, tmp_path):
    rng = random.Random(4)
    good = [_conversation(rng, 1, False) for _ in range(12)]
    one_bad = good[:7] + [{"messages": [{"role": "assistant", "content": "I speak first"}]}] + good[7:]
    spec = SFTSpec(sources={"x": _write(tmp_path, "x", one_bad, shard_records=5)}, weights={"x": 1.0},
                   seq_length=128, batch_size=2, max_epochs=1)
    with pytest.raises(BadRecordError, match=r"x/part-00002\.jsonl\.zst:3: bad SFT record: turn 1: 'assistant'"):
        list(build_sft_loader(spec, chat_tok))

    bad = [{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
           {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]},
           {"conversations": [{"from": "human", "value": "no reply"}]}, {"text": "not a chat"}]
    spec.sources = {"y": _write(tmp_path, "y", good + bad * 2, shard_records=5)}
    spec.weights, spec.on_bad_record = {"y": 1.0}, "skip"
    spec.tokenize_batch_docs = 2  # some encoding batches hold only bad records: the source must go on
    loader = build_sft_loader(spec, chat_tok)
    assert sum(int(b["document_ids"].max(1).values.add(1).sum()) for b in loader) == 12
    report = loader.report()["y"]
    assert (report["bad_records"], report["conversations"], report["epochs"]) == (8, 12, 1.0)
    assert "part-0000" in report["first_bad"]

    spec.sources, spec.weights, spec.max_epochs = {"z": _write(tmp_path, "z", bad)}, {"z": 1.0}, None
    with pytest.raises(ShardError, match="none of its 4 records is a usable conversation"):
        next(iter(build_sft_loader(spec, chat_tok)))  # an endless run over nothing usable stops instead of hanging


def test_a_tokenizer_without_chat_tokens_is_a_clear_error(tiny_tokenizer):
    with pytest.raises(ChatTokenizerError, match=r"lacks the chat tokens.*utils/add_chat_tokens\.py.*"
                                                 r"resize_model_vocab_size"):
        ChatEncoder(tiny_tokenizer, 64)


class _ListMixture:
    """A stand-in mixture over fixed samples (state: samples handed out)."""

    def __init__(self, samples: list[Sample]):
        self.samples, self.taken = samples, 0

    def state_dict(self) -> dict:
        return {"taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        self.taken = state["taken"]

    def __iter__(self):
        while self.taken < len(self.samples):
            self.taken += 1
            yield self.samples[self.taken - 1]


def test_best_fit_decreasing_fills_rows_on_a_realistic_length_mix():
    rng = random.Random(0)
    seq_length = 2048  # chat lengths: log-normal around 350 tokens, long tail, cut at seq_length
    lengths = [min(seq_length, max(16, int(rng.lognormvariate(5.85, 0.9)))) for _ in range(6000)]
    samples = [Sample([n] * n, [n] * n) for n in lengths]
    rows = list(ConversationPacker(_ListMixture(samples), seq_length, buffer=1024))
    assert sorted(id(s) for row in rows for s in row) == sorted(id(s) for s in samples)  # each exactly once
    assert max(sum(map(len, row)) for row in rows) <= seq_length
    fill = sum(lengths) / (len(rows) * seq_length)
    assert fill >= 0.98, fill
