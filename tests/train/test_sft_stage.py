"""The SFT stage end to end: a tiny model learns to answer through the chat template and to stop at
<|endofchat|> (a control with random answers does not), checkpoints generate with plain transformers, and
a resumed SFT run equals an uninterrupted one."""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml

from llms_trainer.data.shards import dump_record, write_source
from llms_trainer.train.run import run
from tests.train.conftest import RecordingLogger, tiny_llama

DIALOGS = [("What is the capital of France?", "The capital of France is Paris."),
           ("How many legs does a spider have?", "A spider has eight legs."),
           ("Name a primary color.", "Blue is a primary color.")]
WORDS = "the model reads data from many sources and learns to predict next token while weights".split()


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory, tiny_tokenizer_dir):
    from llms_trainer.tokenizer.chat import add_chat_tokens_to_dir

    out = tmp_path_factory.mktemp("chat") / "tok"
    add_chat_tokens_to_dir(tiny_tokenizer_dir, out)
    return out


def write_run(tmp_path, chat_dir, name: str, random_answers: bool, steps: int, **train) -> tuple:
    from transformers import AutoTokenizer

    rng = random.Random(0)
    records = []
    for _ in range(40):
        for question, answer in DIALOGS:
            if random_answers:  # the control: the reply carries no learnable relation to the question
                answer = " ".join(rng.choice(WORDS) for _ in range(6)).capitalize() + "."
            records.append({"messages": [{"role": "user", "content": question},
                                         {"role": "assistant", "content": answer}]})
    shards = tmp_path / f"{name}_data"
    write_source((dump_record(r) for r in records), shards, "chats", shard_records=None, shard_bytes=None)
    vocab = len(AutoTokenizer.from_pretrained(str(chat_dir)))
    model_config = tmp_path / f"{name}_model.json"
    model_config.write_text(json.dumps(tiny_llama(vocab)))
    cfg = {"data": {"mode": "sft", "data": {"chats": str(shards / "chats")}, "seq_length": 64,
                    "tokenizer_path": str(chat_dir), "concat_multiple_sequence": True},
           "train": {"train_batch_size": 4, "num_training_steps": steps, "num_warmup_steps": 2, "lr": 1e-2,
                     "min_lr": 1e-3, "weight_decay": 0.0, "ckpt": None, "seed": 3, "mixed_precision": "no",
                     **train},
           "log_interval": 5, "eval_interval": 1000, "save_interval": 1000, "work_dir": str(tmp_path / name)}
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return config, model_config


def answer_nll(model, tokenizer, question: str, answer: str) -> float:
    """Mean NLL of the reply tokens (and its <|endofchat|>) after the chat-template prompt."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           tokenize=True, return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template([{"role": "user", "content": question},
                                          {"role": "assistant", "content": answer}], tokenize=True,
                                         return_dict=True)["input_ids"]
    ids = torch.tensor([full])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1: -2]  # predict the reply and its end token
    targets = ids[0, len(prompt): -1]
    return float(torch.nn.functional.cross_entropy(logits, targets))


def test_sft_learns_replies_and_stops_at_endofchat_while_a_control_does_not(tmp_path, chat_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, model_config = write_run(tmp_path, chat_dir, "learn", random_answers=False, steps=90)
    run(config, [], str(model_config), logger=RecordingLogger())
    control, control_model = write_run(tmp_path, chat_dir, "control", random_answers=True, steps=90)
    run(control, [], str(control_model), logger=RecordingLogger())

    checkpoint = tmp_path / "learn" / "checkpoint-90"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    end = tokenizer.convert_tokens_to_ids("<|endofchat|>")
    assert end in model.generation_config.eos_token_id and tokenizer.pad_token_id != tokenizer.eos_token_id
    for question, answer in DIALOGS:  # plain transformers, the documented inference recipe
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                               return_dict=True, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=40, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        assert out[-1] == end and len(out) < 40  # stopped at the end of the reply
        assert tokenizer.decode(out, skip_special_tokens=True).strip() == answer

    control_model = AutoModelForCausalLM.from_pretrained(tmp_path / "control" / "checkpoint-90").eval()
    learned = sum(answer_nll(model, tokenizer, q, a) for q, a in DIALOGS) / len(DIALOGS)
    guessed = sum(answer_nll(control_model, tokenizer, q, a) for q, a in DIALOGS) / len(DIALOGS)
    assert learned < 0.3 and guessed > 3 * learned + 1.0, (learned, guessed)


def test_sft_resume_equals_an_uninterrupted_run(tmp_path, chat_dir):
    config, model_config = write_run(tmp_path, chat_dir, "full", random_answers=False, steps=6)
    reference = run(config, ["save_interval=3"], str(model_config), logger=RecordingLogger()).losses
    resumed = run(config, [f"train.resume={tmp_path / 'full' / 'checkpoint-3'}", f"work_dir={tmp_path / 'again'}"],
                  str(model_config), logger=RecordingLogger()).losses
    assert sorted(resumed) == [4, 5, 6]
    for step in resumed:
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6)
