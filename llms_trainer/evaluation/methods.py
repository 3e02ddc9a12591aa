"""The evaluation methods, one registry: name → the config key of its dataset and how to build it.

Config validation reads `EVAL_METHODS` (names and dataset keys) without importing torch; `build_evaluators`
reads every dataset once (so a bad record fails before training) and returns callables
`(model, step) -> {metric: float}` for the engine. A stage with its own evaluation (reward accuracy) adds its
callables next to these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llms_trainer.data.shards import dataset_files


@dataclass(frozen=True)
class EvalMethod:
    dataset_key: str                       # eval.<key>: file, list of files, or {name: file}
    build: Callable[[Any, list[str], Any, Any], Callable]   # (cfg, files, tokenizer, accelerator) → evaluator


def _single_choice(cfg, files, tokenizer, accelerator):
    from llms_trainer.evaluation.single_choice import evaluate_single_choice, load_single_choice

    e = cfg.eval
    questions = [q for path in files for q in load_single_choice(path)]
    return lambda model, step: evaluate_single_choice(model, tokenizer, questions, accelerator,
                                                      few_shot_prefix=e.few_shot_prefix, batch_size=e.batch_size)


def _generation(cfg, files, tokenizer, accelerator):
    from llms_trainer.evaluation.generation import evaluate_generation, load_generation_prompts

    e = cfg.eval
    prompts = [p for path in files for p in load_generation_prompts(path)]
    save_dir = Path(e.generation_eval_save_path or Path(cfg.work_dir) / "generation_eval")
    encode = None
    if cfg.stage_section().chat:  # a user turn + the generation prompt; stops at <|endofchat|>
        from llms_trainer.data.sft import ChatEncoder

        encoder = ChatEncoder(tokenizer, cfg.data.seq_length)
        encode = lambda prompt: encoder.prompt_ids([{"role": "user", "content": prompt}])  # noqa: E731
    return lambda model, step: evaluate_generation(model, tokenizer, prompts, accelerator,
                                                   max_new_tokens=e.max_new_tokens, save_dir=save_dir, step=step,
                                                   batch_size=e.batch_size, encode=encode)


def _nll(cfg, files, tokenizer, accelerator):
    from llms_trainer.evaluation.nll import evaluate_nll, load_nll_texts

    texts = [t for path in files for t in load_nll_texts(path)]
    return lambda model, step: evaluate_nll(model, tokenizer, texts, accelerator, seq_length=cfg.data.seq_length,
                                            batch_size=cfg.eval.batch_size)


def _chat_nll(cfg, files, tokenizer, accelerator):
    from llms_trainer.evaluation.nll import evaluate_windows, load_chat_windows

    windows = [w for path in files for w in load_chat_windows(path, tokenizer, cfg.data.seq_length)]
    return lambda model, step: evaluate_windows(model, tokenizer, windows, accelerator, cfg.eval.batch_size,
                                                "eval/chat_nll")


EVAL_METHODS: dict[str, EvalMethod] = {
    "single_choice_eval": EvalMethod("single_choice_dataset", _single_choice),
    "generation_eval": EvalMethod("generation_dataset", _generation),
    "nll_eval": EvalMethod("nll_dataset", _nll),
    "chat_nll_eval": EvalMethod("chat_nll_dataset", _chat_nll),
}
EVAL_ALIASES = {"nll": "nll_eval"}  # the original configs call it "nll"


def build_evaluators(cfg, tokenizer, accelerator) -> list[Callable]:
    """One callable per method in eval.eval_methods (datasets read now)."""
    return [EVAL_METHODS[m].build(cfg, dataset_files(getattr(cfg.eval, EVAL_METHODS[m].dataset_key)), tokenizer,
                                  accelerator) for m in cfg.eval.methods()]
