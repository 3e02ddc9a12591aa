"""Run every evaluator under `accelerate launch` (used by test_distributed.py; not a test itself).

usage: accelerate launch ... dist_eval_script.py TOKENIZER_DIR OUT_DIR
Each rank writes OUT_DIR/metrics_rank<r>.json; generation outputs go to OUT_DIR/gen/step_3.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llms_trainer.evaluation.generation import evaluate_generation
from llms_trainer.evaluation.nll import evaluate_nll
from llms_trainer.evaluation.single_choice import evaluate_single_choice, load_single_choice

PROMPTS = ["The model reads", "data", "Optimizer updates weights step by step", "模型读取", "the"]
NLL_TEXTS = ["The model reads data from many sources and learns.", "模型读取数据", "the", "step by step " * 5]


def build_model(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer),
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).float()


def run_all(model, tokenizer, accelerator, out_dir: Path) -> dict[str, float]:
    metrics = evaluate_single_choice(model, tokenizer, load_single_choice(out_dir / "knowledge.jsonl"),
                                     accelerator, batch_size=2)
    metrics |= evaluate_generation(model, tokenizer, PROMPTS, accelerator, max_new_tokens=5,
                                   save_dir=out_dir / "gen", step=3, batch_size=2)
    metrics |= evaluate_nll(model, tokenizer, NLL_TEXTS, accelerator, seq_length=6, batch_size=2)
    return metrics


def main(tokenizer_dir: str, out_dir: str) -> None:
    accelerator = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if accelerator.state.deepspeed_plugin is not None:  # no dataloader is prepared to infer it from
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 1
    model = accelerator.prepare(build_model(tokenizer))
    metrics = run_all(model, tokenizer, accelerator, Path(out_dir))
    path = Path(out_dir) / f"metrics_rank{accelerator.process_index}.json"
    path.write_text(json.dumps({"world": accelerator.num_processes, "metrics": metrics}), encoding="utf-8")
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(*sys.argv[1:3])
