"""Model set-up: vocabulary check/resize, LoRA checkpoints, embeddings-only training."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from llms_trainer.model.load import ModelLoadError, build_model, load_tokenizer
from llms_trainer.train.run import run
from llms_trainer.train.stages import load_config
from tests.train.conftest import RecordingLogger, tiny_llama


def train(config, model_config, *overrides):
    return run(config, list(overrides), str(model_config), logger=RecordingLogger())


def initial_weights(config, model_config) -> dict[str, torch.Tensor]:
    """The weights a run of `config` starts from (same seed, same init)."""
    cfg = load_config(config)
    model = build_model(cfg.train, load_tokenizer(cfg.data.tokenizer_path), str(model_config))
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def small_vocab_config(tmp_path, tiny_tokenizer):
    path = tmp_path / "small_vocab.json"
    path.write_text(json.dumps(tiny_llama(len(tiny_tokenizer) - 100)))
    return path


def test_vocab_mismatch_is_an_error_unless_resize(write_config, small_vocab_config, tiny_tokenizer, tmp_path):
    config = write_config(train={"num_training_steps": 1})
    with pytest.raises(ModelLoadError, match="train.resize_model_vocab_size: the model has 600 token embeddings"):
        train(config, small_vocab_config)
    train(config, small_vocab_config, "train.resize_model_vocab_size=true")
    saved = load_file(tmp_path / "run" / "checkpoint-1" / "model.safetensors")
    assert saved["model.embed_tokens.weight"].shape[0] == len(tiny_tokenizer)


def test_lora_trains_adapters_and_saves_merged_weights(write_config, model_config_file, tmp_path):
    from transformers import AutoModelForCausalLM

    config = write_config(train={"num_training_steps": 3, "use_lora": True, "lr": 5e-2,
                                 "target_modules": ["q_proj", "v_proj"], "lora_rank": 4})
    initial = initial_weights(config, model_config_file)
    train(config, model_config_file)
    checkpoint = tmp_path / "run" / "checkpoint-3"
    assert (checkpoint / "adapter" / "adapter_model.safetensors").is_file()
    merged = load_file(checkpoint / "model.safetensors")
    assert set(merged) == set(initial)  # plain HF keys, no lora_ / base_layer names
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged[q], initial[q], atol=1e-6)  # the adapter is merged in
    assert torch.allclose(merged["model.layers.0.mlp.up_proj.weight"], initial["model.layers.0.mlp.up_proj.weight"],
                          atol=1e-6)  # untargeted weights are frozen
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert model(torch.tensor([[1, 5, 9]])).logits.shape == (1, 3, merged["lm_head.weight"].shape[0])
    resumed = train(config, model_config_file, "train.num_training_steps=4")  # resumes from the adapter
    assert sorted(resumed.losses) == [4]


def test_embeddings_only_changes_only_embeddings(write_config, model_config_file, tmp_path):
    config = write_config(train={"num_training_steps": 2, "lr": 5e-2, "train_token_embeddings_only": True,
                                 "token_embedding_layer_name": ["embed_tokens", "lm_head"]})
    initial = initial_weights(config, model_config_file)
    train(config, model_config_file)
    trained = load_file(tmp_path / "run" / "checkpoint-2" / "model.safetensors")
    changed = {k for k in trained if not torch.allclose(trained[k], initial[k], atol=1e-6)}
    assert changed == {"model.embed_tokens.weight", "lm_head.weight"}


def test_unknown_embedding_layer_name_is_an_error(write_config, model_config_file):
    config = write_config(train={"train_token_embeddings_only": True, "token_embedding_layer_name": "wte"})
    with pytest.raises(ModelLoadError, match="token_embedding_layer_name: no parameter inside"):
        train(config, model_config_file)


def test_model_config_may_be_yaml(write_config, tmp_path, tiny_tokenizer):
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_llama(len(tiny_tokenizer), num_hidden_layers=1)))
    train(write_config(train={"num_training_steps": 1}), path)
    config = json.loads((tmp_path / "run" / "checkpoint-1" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["model_type"] == "llama"
