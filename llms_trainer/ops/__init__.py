"""Model operations shared by the training stages and the evaluators (below both, above `model/`).

padding (positions, left-padded prompts), models (unwrapping, eval mode, ZeRO-3 test), ranks (rank shares,
gathering), generate (decoding), lm_loss (chunked next-token loss and log-probs), logprobs (token log-probs
of labelled tokens), scores (sequence scores of a 1-label classifier, `score_pairs`), reference (the frozen
reference of DPO and GRPO), completion_rewards (reward functions and the reward model that score RL
completions).
"""
