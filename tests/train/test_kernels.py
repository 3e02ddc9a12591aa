"""train.compile (torch.compile of the decoder layers) and train.attn_implementation: same training, clear
errors where a choice cannot run."""

from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import pytest
import torch

from llms_trainer.config import ConfigError
from llms_trainer.model.load import ModelLoadError, build_causal_lm, load_tokenizer, maybe_compile
from llms_trainer.ops.lm_loss import plain_loss_sum
from llms_trainer.train.run import run
from llms_trainer.train.stages import load_config
from tests.train.conftest import RecordingLogger
from tests.train.test_distributed import hf_logits


def has_cxx_compiler() -> bool:
    return any(shutil.which(cxx) for cxx in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if cxx)


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available() and not has_cxx_compiler(),
                    reason="torch.compile (inductor) on CPU needs a C++ compiler; none is installed")
def test_compiled_layers_train_like_eager_and_save_plain_checkpoints(write_config, deterministic_model_config_file,
                                                                     tmp_path):
    steps = {"num_training_steps": 3, "num_warmup_steps": 1}
    eager = run(write_config("eager", train=steps), [], str(deterministic_model_config_file),
                logger=RecordingLogger()).losses
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = run(write_config("compiled", train={**steps, "compile": True}), [],
                   str(deterministic_model_config_file), logger=RecordingLogger()).losses
    assert counters["stats"]["unique_graphs"] > 0  # it really compiled
    assert list(compiled) == [1, 2, 3]
    for step, loss in eager.items():
        assert compiled[step] == pytest.approx(loss, abs=1e-4)
    assert torch.allclose(hf_logits(tmp_path / "compiled" / "checkpoint-3"),
                          hf_logits(tmp_path / "eager" / "checkpoint-3"), atol=1e-4)


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_attention_kernels_build_and_give_the_same_loss(kernel, write_config, deterministic_model_config_file,
                                                        tiny_tokenizer_dir):
    def loss_with(name: str) -> torch.Tensor:
        cfg = load_config(write_config(train={"attn_implementation": name}))
        model = build_causal_lm(cfg, load_tokenizer(str(tiny_tokenizer_dir)), str(deterministic_model_config_file))
        assert model.config._attn_implementation == name
        ids = torch.tensor([[1, 40, 50, 60, 70, 2], [1, 80, 90, 2, 0, 0]])
        mask = (torch.arange(6) < torch.tensor([[6], [4]])).long()
        labels = ids.masked_fill(mask == 0, -100)
        with torch.no_grad():
            return plain_loss_sum(model, {"input_ids": ids, "attention_mask": mask, "labels": labels})

    torch.testing.assert_close(loss_with(kernel), loss_with("sdpa"), atol=1e-5, rtol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_flash_attention_2_on_cpu_is_a_config_error(write_config):
    with pytest.raises(ConfigError, match="key train.attn_implementation: flash_attention_2"):
        load_config(write_config(), ["train.attn_implementation=flash_attention_2"])


def test_unknown_attention_kernel_is_a_config_error(write_config):
    with pytest.raises(ConfigError, match="key train.attn_implementation"):
        load_config(write_config(), ["train.attn_implementation=flex"])


def test_compile_without_a_cxx_compiler_on_cpu_is_a_config_error(write_config, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="key train.compile: .*C\\+\\+ compiler"):
        load_config(write_config(), ["train.compile=true"])


def test_compile_is_refused_under_zero3(write_config, deterministic_model_config_file, tiny_tokenizer_dir):
    cfg = load_config(write_config(train={"compile": True}))
    model = build_causal_lm(cfg, load_tokenizer(str(tiny_tokenizer_dir)), str(deterministic_model_config_file))
    plugin = SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": 3}})
    zero3 = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin))
    with pytest.raises(ModelLoadError, match="train.compile: not supported under DeepSpeed ZeRO-3"):
        maybe_compile(model, cfg.train, zero3)
    assert maybe_compile(model, cfg.train.model_copy(update={"compile": False}), zero3) is model
