"""LLMs Trainer: continued pretraining, tokenizer extension, SFT, reward models and RL on accelerate."""

__version__ = "0.1.0"
