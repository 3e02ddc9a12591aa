"""The training tokenizer (load_tokenizer) and what a checkpoint saves of it: one BOS as the data path adds
it, a pad token distinct from EOS that pads batches, and a row for a pad token that had to be added."""

from __future__ import annotations

import json
from types import SimpleNamespace

import yaml
from transformers import AutoTokenizer

from llms_trainer.data.packing import pad_id
from llms_trainer.data.pipeline import make_encoder
from llms_trainer.data.shards import dump_record, write_source
from llms_trainer.model.load import build_model, load_tokenizer
from llms_trainer.tokenizer.save import PAD_TOKEN
from llms_trainer.train.run import run
from tests.helpers import text_records
from tests.train.conftest import RecordingLogger, fresh_accelerate_state, tiny_llama  # noqa: F401 (fixture)


def test_training_pads_with_unk_not_eos(tiny_tokenizer_dir):
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    assert pad_id(tokenizer) == tokenizer.unk_token_id == 0 != tokenizer.eos_token_id
    assert tokenizer("the model")["input_ids"] == make_encoder(tokenizer)(["the model"])[0][:-1]


def test_checkpoint_tokenizer_pads_a_batch_and_adds_bos_like_training(tmp_path, tiny_tokenizer_dir):
    write_source((dump_record(r) for r in text_records(40, seed=1)), tmp_path / "data", "en", shard_records=None)
    model_config = tmp_path / "tiny_llama.json"
    model_config.write_text(json.dumps(tiny_llama(len(AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))))))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"mode": "pretrain", "data": {"en": str(tmp_path / "data" / "en")}, "seq_length": 32,
                 "concat_multiple_sequence": True, "tokenizer_path": str(tiny_tokenizer_dir)},
        "train": {"train_batch_size": 2, "num_training_steps": 2, "num_warmup_steps": 1, "lr": 1e-3, "ckpt": None,
                  "seed": 7, "mixed_precision": "no"},
        "log_interval": 1, "eval_interval": 100, "save_interval": 100, "work_dir": str(tmp_path / "work")}))
    run(config, [], str(model_config), logger=RecordingLogger())
    saved = AutoTokenizer.from_pretrained(str(tmp_path / "work" / "checkpoint-2"))
    assert saved.pad_token_id is not None and saved.pad_token_id != saved.eos_token_id
    batch = saved(["Hi", "the model reads data from many sources"], padding=True)
    assert len(batch["input_ids"][0]) == len(batch["input_ids"][1]) and 0 in batch["attention_mask"][0]
    training = load_tokenizer(str(tiny_tokenizer_dir))
    for text in ("Hi", "Hi there", "模型 reads 2024"):
        ids = saved(text)["input_ids"]
        assert ids.count(saved.bos_token_id) == 1 and ids == make_encoder(training)([text])[0][:-1]


def test_a_pad_that_had_to_be_added_gets_an_embedding_row(tmp_path, tiny_tokenizer_dir):
    only_eos = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    only_eos.unk_token = only_eos.eos_token  # no token but EOS to pad with
    only_eos.save_pretrained(str(tmp_path / "tok"))
    tokenizer = load_tokenizer(str(tmp_path / "tok"))
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_token_id == len(only_eos)
    model_config = tmp_path / "tiny_llama.json"
    model_config.write_text(json.dumps(tiny_llama(len(only_eos))))
    train = SimpleNamespace(dtype="float32", ckpt=None, initializer_range=None, seed=0, trust_remote_code=False,
                            resize_model_vocab_size=False, attn_implementation="sdpa")
    model = build_model(train, tokenizer, str(model_config))
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) == len(only_eos) + 1
