"""Example reward functions for GRPO, named in a config as `configs/rl_configs/reward_funcs.py:NAME`.

A reward function is called once per rollout with the prompt texts, the completion texts (special tokens
removed) and the other columns of the prompt records (lists aligned with the completions), and returns one
finite number per completion:

    def my_reward(prompts: list[str], completions: list[str], **columns) -> list[float]
"""

from __future__ import annotations


def _chinese_share(text: str) -> float | None:
    """Share of the letters of `text` that are CJK ideographs (None without any letter)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return None
    return sum("\u4e00" <= c <= "\u9fff" for c in letters) / len(letters)


def same_language(prompts: list[str], completions: list[str], **columns) -> list[float]:
    """The share of the completion's letters written in the prompt's script (Chinese vs. Latin letters):
    1 for a reply in the prompt's language, 0 for one in the other language or without any letter."""
    rewards = []
    for prompt, completion in zip(prompts, completions, strict=True):
        share = _chinese_share(completion)
        if share is None:
            rewards.append(0.0)
            continue
        chinese_prompt = (_chinese_share(prompt) or 0.0) >= 0.5
        rewards.append(share if chinese_prompt else 1.0 - share)
    return rewards


def concise(prompts: list[str], completions: list[str], max_chars: int = 300, **columns) -> list[float]:
    """1 for a non-empty completion up to `max_chars` characters, falling linearly to 0 at twice that."""
    rewards = []
    for completion in completions:
        length = len(completion.strip())
        rewards.append(0.0 if length == 0 else max(0.0, min(1.0, 2.0 - length / max_chars)))
    return rewards
