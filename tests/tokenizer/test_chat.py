"""Chat tokens and template: atomic special tokens, template == SFT rendering, exact trained segments."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from llms_trainer.data.chat_format import (
    CHAT_TOKENS,
    ChatFormatError,
    Segment,
    chat_segments,
    render_chat,
    tokenize_segments,
)
from llms_trainer.tokenizer import TokenizerError
from llms_trainer.tokenizer.chat import add_chat_tokens, add_chat_tokens_to_dir
from llms_trainer.tokenizer.save import PAD_TOKEN

CONVERSATION = [
    {"role": "system", "content": "你是一个助手。Be brief."},
    {"role": "user", "content": "长江有多长？"},
    {"role": "assistant", "content": "约6300千米。"},
    {"role": "user", "content": "And 黄河?"},
    {"role": "assistant", "content": "About 5,464 km 😀"},
]


@pytest.fixture(scope="module")
def chat_tokenizer(chat_dir):
    return AutoTokenizer.from_pretrained(str(chat_dir))


def test_segments_flag_only_assistant_content_and_its_end_token():
    assert chat_segments(CONVERSATION, bos_token="<s>") == [
        Segment("<s><|system|>你是一个助手。Be brief.<|endofchat|>\n<|user|>长江有多长？<|endofchat|>\n<|assistant|>",
                False),
        Segment("约6300千米。<|endofchat|>", True),
        Segment("\n<|user|>And 黄河?<|endofchat|>\n<|assistant|>", False),
        Segment("About 5,464 km 😀<|endofchat|>", True),
        Segment("\n", False),
    ]
    assert render_chat(CONVERSATION[:2], add_generation_prompt=True).endswith("<|endofchat|>\n<|assistant|>")


def test_chat_tokens_are_single_ids_never_split(chat_tokenizer, merged_dir):
    base_size = len(AutoTokenizer.from_pretrained(str(merged_dir)))
    ids = [chat_tokenizer.convert_tokens_to_ids(t) for t in CHAT_TOKENS]
    assert sorted(ids) == list(range(base_size, base_size + 4)) and len(chat_tokenizer) == base_size + 4
    assert chat_tokenizer.pad_token == "<unk>" != chat_tokenizer.eos_token  # an existing token: no new row
    for token, token_id in zip(CHAT_TOKENS, ids, strict=True):
        assert chat_tokenizer.encode(token, add_special_tokens=False) == [token_id]
        glued = chat_tokenizer.encode(f"模型{token}data", add_special_tokens=False)
        assert glued.count(token_id) == 1
        assert chat_tokenizer.decode(glued, skip_special_tokens=True) == "模型data"


def test_template_matches_the_sft_rendering(chat_tokenizer):
    bos = chat_tokenizer.bos_token
    for turns in (CONVERSATION, CONVERSATION[1:3], CONVERSATION[:2]):
        assert chat_tokenizer.apply_chat_template(turns, tokenize=False) == render_chat(turns, bos)
        assert (chat_tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
                == render_chat(turns, bos, add_generation_prompt=True))
    prompt = chat_tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("长江有多长？<|endofchat|>\n<|assistant|>")
    with pytest.raises(Exception, match="unknown chat role"):
        chat_tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_segment_tokens_equal_template_tokens_and_round_trip(chat_tokenizer):
    text = render_chat(CONVERSATION, chat_tokenizer.bos_token)
    template_ids = chat_tokenizer.apply_chat_template(CONVERSATION, tokenize=True)["input_ids"]
    assert template_ids == chat_tokenizer(text, add_special_tokens=False)["input_ids"]
    ids, train = tokenize_segments(chat_tokenizer, chat_segments(CONVERSATION, chat_tokenizer.bos_token))
    assert ids == template_ids
    assert chat_tokenizer.decode(ids) == text
    trained = chat_tokenizer.decode([i for i, flag in zip(ids, train, strict=True) if flag])
    assert trained == "约6300千米。<|endofchat|>About 5,464 km 😀<|endofchat|>"


def test_adding_twice_adds_nothing_and_an_existing_pad_is_kept(tiny_tokenizer_dir, chat_dir):
    again = AutoTokenizer.from_pretrained(str(chat_dir))
    size = len(again)
    assert add_chat_tokens(again)["added"] == [] and len(again) == size
    with_pad = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    with_pad.pad_token = "▁the"
    result = add_chat_tokens(with_pad)
    assert result["added"] == list(CHAT_TOKENS) and with_pad.pad_token == "▁the"


def test_pad_token_is_added_only_without_a_usable_one(tiny_tokenizer_dir):
    no_unk = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    no_unk.unk_token = no_unk.eos_token  # the only candidate would be EOS itself
    size = len(no_unk)
    assert add_chat_tokens(no_unk)["added"] == [*CHAT_TOKENS, PAD_TOKEN]
    assert no_unk.pad_token == PAD_TOKEN and no_unk.pad_token_id == size + 4


def test_bad_turns_and_outputs_are_clear_errors(tmp_path, tiny_tokenizer_dir, chat_dir):
    with pytest.raises(ChatFormatError, match="turn 2: role 'bot'"):
        chat_segments([{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}])
    with pytest.raises(ChatFormatError, match="turn 1: content must be a string"):
        render_chat([{"role": "user", "content": None}])
    with pytest.raises(TokenizerError, match="already exists"):
        add_chat_tokens_to_dir(tiny_tokenizer_dir, chat_dir)
    with pytest.raises(TokenizerError, match="not a tokenizer directory"):
        add_chat_tokens_to_dir(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()
