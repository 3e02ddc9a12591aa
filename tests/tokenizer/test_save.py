"""Saved tokenizers behave as HF users expect: one BOS as training adds it, a pad token distinct from EOS,
tokenizer.model beside tokenizer.json encoding the same ids — checked through plain AutoTokenizer."""

from __future__ import annotations

import shutil

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from llms_trainer.data.chat_format import chat_segments, render_chat, tokenize_segments
from llms_trainer.data.pipeline import make_encoder
from llms_trainer.evaluation import encode_with_bos
from llms_trainer.model.load import ModelLoadError, load_tokenizer
from llms_trainer.tokenizer import TokenizerError
from llms_trainer.tokenizer.save import PAD_TOKEN, conform_tokenizer, save_tokenizer
from tests.tokenizer.support import MIXED_TEXTS, zh_texts

TEXTS = ("Hi there", "The model reads data 2024.", "模型在小机器上训练 the model", *MIXED_TEXTS)
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "长江有多长？"},
                {"role": "assistant", "content": "约6300千米。"}]


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory, tiny_tokenizer_dir):
    """The tiny tokenizer as training loads it, saved with save_tokenizer (what a checkpoint holds)."""
    out = tmp_path_factory.mktemp("saved") / "tok"
    save_tokenizer(load_tokenizer(str(tiny_tokenizer_dir)), out)
    return out


def test_plain_call_adds_one_bos_exactly_as_training_does(saved_dir, tiny_tokenizer_dir):
    plain = AutoTokenizer.from_pretrained(str(saved_dir))
    training = load_tokenizer(str(tiny_tokenizer_dir))
    document = make_encoder(training)  # the data path: BOS + text + EOS
    bos, eos = plain.bos_token_id, plain.eos_token_id
    for text in TEXTS:
        ids = plain(text)["input_ids"]
        assert ids[0] == bos and ids.count(bos) == 1 and ids[-1] != eos, text
        assert ids == document([text])[0][:-1] == encode_with_bos(training, text) == plain.encode(text)


def test_pad_token_is_unk_and_pads_a_batch(saved_dir, tiny_tokenizer_dir):
    plain = AutoTokenizer.from_pretrained(str(saved_dir))
    assert plain.pad_token == "<unk>" and plain.pad_token_id not in (plain.eos_token_id, plain.bos_token_id)
    assert len(plain) == len(AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir)))  # no new token, no new row
    batch = plain(["a", "the model reads data"], padding=True)
    short, long = batch["input_ids"]
    assert len(short) == len(long) and short.count(plain.pad_token_id) == len(long) - 2
    assert batch["attention_mask"][0].count(0) == len(long) - 2


def test_tokenizer_model_matches_tokenizer_json(saved_dir, tiny_tokenizer_dir):
    assert (saved_dir / "tokenizer.model").read_bytes() == (tiny_tokenizer_dir / "tokenizer.model").read_bytes()
    sp = spm.SentencePieceProcessor(model_file=str(saved_dir / "tokenizer.model"))
    plain = AutoTokenizer.from_pretrained(str(saved_dir))
    for text in TEXTS:
        assert plain.encode(text, add_special_tokens=False) == sp.encode(text)


@pytest.mark.parametrize("name", ["merged_dir", "chat_dir"])
def test_tool_outputs_keep_a_matching_tokenizer_model_bos_and_pad(name, request):
    out = request.getfixturevalue(name)
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    plain = AutoTokenizer.from_pretrained(str(out))
    for text in (*MIXED_TEXTS, *zh_texts(10, seed=4)):  # no special tokens in these texts
        assert plain.encode(text, add_special_tokens=False) == sp.encode(text)
        assert plain(text)["input_ids"] == [plain.bos_token_id] + sp.encode(text)
    assert plain.pad_token == "<unk>" != plain.eos_token


def test_chat_template_ids_hold_one_bos_and_equal_the_sft_ids(chat_dir):
    plain = AutoTokenizer.from_pretrained(str(chat_dir))
    bos = plain.bos_token_id
    ids = plain.apply_chat_template(CONVERSATION, tokenize=True)["input_ids"]
    assert ids[0] == bos and ids.count(bos) == 1
    assert ids == tokenize_segments(plain, chat_segments(CONVERSATION, plain.bos_token))[0]
    prompt = plain.apply_chat_template(CONVERSATION[:2], tokenize=True, add_generation_prompt=True)["input_ids"]
    assert prompt.count(bos) == 1
    text = render_chat(CONVERSATION, plain.bos_token)
    assert plain(text, add_special_tokens=False)["input_ids"] == ids
    assert plain(text)["input_ids"][:2] == [bos, bos]  # the trap the README warns about


def test_source_dir_may_vanish_before_saving(tmp_path, tiny_tokenizer_dir):
    # a resumed run loads the tokenizer from a checkpoint that rotation may delete before the next save
    shutil.copytree(tiny_tokenizer_dir, tmp_path / "checkpoint-1")
    tokenizer = load_tokenizer(str(tmp_path / "checkpoint-1"))
    shutil.rmtree(tmp_path / "checkpoint-1")
    assert save_tokenizer(tokenizer, tmp_path / "checkpoint-2") == tmp_path / "checkpoint-2" / "tokenizer.model"
    assert ((tmp_path / "checkpoint-2" / "tokenizer.model").read_bytes()
            == (tiny_tokenizer_dir / "tokenizer.model").read_bytes())


def test_a_foreign_tokenizer_model_is_refused(tmp_path, tiny_tokenizer_dir, zh_model_path):
    shutil.copytree(tiny_tokenizer_dir, tmp_path / "mixed")
    shutil.copy(zh_model_path, tmp_path / "mixed" / "tokenizer.model")
    with pytest.raises(ModelLoadError, match=r"data.tokenizer_path: .*tokenizer.model: its 500 pieces are not"):
        load_tokenizer(str(tmp_path / "mixed"))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    with pytest.raises(TokenizerError, match="belongs to another tokenizer"):
        save_tokenizer(tokenizer, tmp_path / "out", source_dir=tmp_path / "mixed")
    assert not (tmp_path / "out").exists()


def test_a_new_pad_is_added_only_by_conform_never_while_saving(tmp_path, tiny_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    tokenizer.unk_token = tokenizer.eos_token  # nothing but EOS to pad with
    size = len(tokenizer)
    with pytest.raises(TokenizerError, match="call conform_tokenizer"):
        save_tokenizer(tokenizer, tmp_path / "out")
    assert len(tokenizer) == size and not (tmp_path / "out").exists()
    assert conform_tokenizer(tokenizer) == [PAD_TOKEN] and conform_tokenizer(tokenizer) == []
    save_tokenizer(tokenizer, tmp_path / "out")
    plain = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert plain.pad_token == PAD_TOKEN and plain.pad_token_id == size
