"""Fixtures for evaluation tests: a seeded tiny Llama and a single-process CPU Accelerator."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def tiny_model(tiny_tokenizer):
    """LlamaForCausalLM(hidden 64, 2 layers) with random seeded weights, fp32, in train mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tiny_tokenizer),
                         bos_token_id=tiny_tokenizer.bos_token_id, eos_token_id=tiny_tokenizer.eos_token_id)
    return LlamaForCausalLM(config).float().train()


@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)
