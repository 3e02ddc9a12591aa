"""Held-out loss per source (`eval.source_holdout_records: N`, pretraining).

The last N records of every source in manifest order never train (`data.stream.holdout_limits`); every
eval they are scored like `nll_eval` texts (BOS + text + EOS, every token after BOS a target) and logged as
`eval/source/<name>/loss` (nats per token), `…/ppl` and `…/nats_per_char`. Nats per character compares
sources and tokenizers; the sampler viewer's training feedback and `propose_policy` read it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llms_trainer.data.records import pretrain_text
from llms_trainer.data.shards import list_shards
from llms_trainer.data.stream import heldout_records
from llms_trainer.evaluation import EvalDataError
from llms_trainer.evaluation.nll import evaluate_nll


def heldout_texts(sources: dict[str, str], holdout_records: int) -> dict[str, list[str]]:
    """{source: texts of its held-out records} (records without pretraining text are left out)."""
    out = {}
    for name, pattern in sources.items():
        texts = [t for t in map(pretrain_text, heldout_records(list_shards(pattern), holdout_records)) if t]
        if not texts:
            raise EvalDataError(f"source_holdout_records: the held-out records of source '{name}' have no text")
        out[name] = texts
    return out


def source_holdout_evaluators(cfg: Any, tokenizer: Any, accelerator: Any) -> list[Callable]:
    """One evaluator logging eval/source/<name>/… for every source, or none when the key is 0."""
    if not cfg.eval.source_holdout_records:
        return []
    texts = heldout_texts(cfg.data.data, cfg.eval.source_holdout_records)
    accelerator.print("held out of training for eval/source: " + ", ".join(
        f"{name} {len(t)} records" for name, t in texts.items()))

    def evaluate(model: Any, step: int) -> dict[str, float]:
        metrics = {}
        for name, source_texts in texts.items():
            metrics.update(evaluate_nll(model, tokenizer, source_texts, accelerator, cfg.data.seq_length,
                                        cfg.eval.batch_size, prefix=f"eval/source/{name}"))
        return metrics

    return [evaluate]
