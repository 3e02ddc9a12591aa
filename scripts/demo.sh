#!/usr/bin/env bash
# The whole pipeline on the bundled samples, on CPU (called by `make demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
PY=python
OUT=work_dirs/tiny_demo
RM=work_dirs/tiny_demo_rm
TOK=work_dirs/tokenizer_demo

echo "== 1. compress the bundled samples into zstd shards"
$PY data/compress_data.py

echo "== 2. the mixture a training run draws (policy: configs/sample_policy/demo.json)"
$PY utils/inspect_mixture.py --data data/pretrain_data --policy configs/sample_policy/demo.json --tokens 100000

echo "== 3. continued pretraining of a tiny Llama from scratch (CPU, about a minute)"
sh train_llms.sh configs/accelerate_configs/cpu.yaml configs/pretrain_configs/tiny_demo.yaml \
    configs/model_configs/tiny_llama.json
CKPT=$(ls -d "$OUT"/checkpoint-* | sort -t- -k2 -n | tail -n 1)

echo "== 4. reward model on the bundled preference pairs, from that checkpoint (CPU, about a minute)"
sh train_reward_model.sh configs/accelerate_configs/cpu.yaml configs/reward_model_configs/tiny_demo.yaml \
    train.ckpt="$CKPT"
RM_CKPT=$(ls -d "$RM"/checkpoint-* | sort -t- -k2 -n | tail -n 1)
$PY utils/score_pairs.py "$RM_CKPT" eval_data/reward_model/test_pairs.jsonl

echo "== 5. tokenizer extension: Chinese SentencePiece, merge into demo_base, chat tokens, extend the model"
rm -rf "$TOK"
$PY utils/train_tokenizer.py --data data/pretrain_data/wiki_zh data/pretrain_data/qa_zh --vocab-size 3000 \
    --output "$TOK/zh_sp"
$PY utils/merge_tokenizer.py --base configs/tokenizers/demo_base --add "$TOK/zh_sp.model" --output "$TOK/merged" \
    --report-text eval_data/pretrain/nll.jsonl
$PY utils/add_chat_tokens.py --tokenizer "$TOK/merged" --output "$TOK/chat"
$PY utils/extend_model_token_embeddings.py --model "$CKPT" --new-tokenizer "$TOK/chat" --output "$TOK/extended_model"

echo "== 5. instruction tuning (SFT) of the extended model on the bundled chats, conversations packed"
sh train_llms.sh configs/accelerate_configs/cpu.yaml configs/sft_configs/tiny_demo.yaml
SFT=$(ls -d work_dirs/tiny_sft/checkpoint-* | sort -t- -k2 -n | tail -n 1)

echo "== 6. DPO of the SFT model on the bundled preference pairs (reference: the SFT checkpoint)"
sh train_rl.sh configs/accelerate_configs/cpu.yaml configs/rl_configs/dpo_tiny_demo.yaml \
    train.ckpt="$SFT" data.tokenizer_path="$SFT"
DPO=$(ls -d work_dirs/tiny_dpo/checkpoint-* | sort -t- -k2 -n | tail -n 1)

echo "== 7. a short GRPO of the SFT model against the reward model (its own, smaller tokenizer)"
sh train_rl.sh configs/accelerate_configs/cpu.yaml configs/rl_configs/grpo_tiny_demo.yaml \
    train.ckpt="$SFT" data.tokenizer_path="$SFT" grpo.reward_model="$RM_CKPT"
GRPO=$(ls -d work_dirs/tiny_grpo/checkpoint-* | sort -t- -k2 -n | tail -n 1)

echo
echo "== summary (also in work_dirs/demo_summary.md)"
$PY scripts/demo_summary.py

echo
echo "== done"
echo "checkpoint:          $CKPT"
echo "metrics:             $OUT/metrics.jsonl"
echo "plot:                $(ls "$OUT"/*.png | head -n 1)"
echo "generations:         $OUT/generation_eval/"
echo "reward model:        $RM_CKPT  (metrics: $RM/metrics.jsonl, delta histograms: $RM/reward_eval/)"
echo "merged tokenizer:    $TOK/chat  (report: $TOK/merged/merge_report.json)"
echo "extended model:      $TOK/extended_model"
echo "SFT checkpoint:      $SFT  (generations: work_dirs/tiny_sft/generation_eval/)"
echo "DPO checkpoint:      $DPO  (metrics: work_dirs/tiny_dpo/metrics.jsonl)"
echo "GRPO checkpoint:     $GRPO  (greedy completions and rewards: work_dirs/tiny_grpo/grpo_eval/)"
