"""Documented import path of `score_pairs` (scoring (prompt, response) pairs with a reward model); it lives in
`llms_trainer.ops.scores`."""

from llms_trainer.ops.scores import score_pairs

__all__ = ["score_pairs"]
