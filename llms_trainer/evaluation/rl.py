"""Evaluation of an RL policy: the rewards of its greedy completions on held-out prompts (GRPO's eval).

Each process completes its share of the prompts greedily (chat format + generation prompt, stopping at
<|endofchat|> or EOS, at most grpo.max_new_tokens), scores them with the run's rewards and the results are
gathered: eval/grpo/reward (the weighted total), eval/grpo/rewards/<part> (e.g. reward_model: the reward
model's mean score), eval/grpo/completion_length. The main process writes
work_dir/grpo_eval/step_<n>.json = [{"prompt", "completion", "reward", "rewards": {part: value}}].
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from llms_trainer.data.chat_format import END_TOKEN
from llms_trainer.data.prompts import PromptSet
from llms_trainer.io import atomic_write
from llms_trainer.ops.completion_rewards import Rewarder, score_completions
from llms_trainer.ops.generate import generate
from llms_trainer.ops.ranks import gather_results, merge_results, rank_share


class CompletionRewardEval:
    """Greedy completions of held-out prompts, their rewards (eval/grpo/reward, eval/grpo/rewards/<part>,
    eval/grpo/completion_length) and work_dir/grpo_eval/step_<n>.json."""

    def __init__(self, cfg, prompts: PromptSet, rewarder: Callable[[], Rewarder], tokenizer, accelerator):
        self.cfg, self.prompts, self.rewarder, self.tokenizer, self.accelerator = cfg, prompts, rewarder, tokenizer, accelerator
        self.stops = sorted({int(tokenizer.eos_token_id), int(tokenizer.convert_tokens_to_ids(END_TOKEN))})

    def __call__(self, model, step: int) -> dict[str, float]:
        acc, rewarder = self.accelerator, self.rewarder()
        share = rank_share(list(range(len(self.prompts.prompts))), acc.process_index, acc.num_processes)
        indices = [i for _, i in share]
        out = generate(model, self.tokenizer, [self.prompts.ids[i] for i in indices],
                       max_new_tokens=self.cfg.grpo.max_new_tokens, stop_token_ids=self.stops,
                       batch_size=self.cfg.eval.batch_size, accelerator=acc)
        parts = score_completions(rewarder, [self.prompts.prompts[i].text for i in indices], out.texts,
                                  self.prompts.column_values(indices), acc, f"{step} (eval)")
        rows = zip(out.texts, rewarder.total(parts).tolist(), parts.tolist(), out.completion_mask.sum(-1).tolist(),
                   strict=True)
        results = merge_results(gather_results(acc, [(i, row) for (i, _), row in zip(share, rows, strict=True)]))
        count = len(results)
        metrics = {"eval/grpo/reward": sum(r[1] for r in results) / count,
                   "eval/grpo/completion_length": sum(r[3] for r in results) / count}
        for k, name in enumerate(rewarder.names):
            metrics[f"eval/grpo/rewards/{name}"] = sum(r[2][k] for r in results) / count
        if acc.is_main_process:
            saved = [{"prompt": p.text, "completion": text, "reward": total, "rewards": dict(zip(rewarder.names, row,
                                                                                                   strict=True))}
                     for p, (text, total, row, _) in zip(self.prompts.prompts, results, strict=True)]
            atomic_write(Path(self.cfg.work_dir) / "grpo_eval" / f"step_{step}.json",
                         json.dumps(saved, ensure_ascii=False, indent=1).encode("utf-8"))
        return metrics
