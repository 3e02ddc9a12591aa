#!/usr/bin/env bash
# The whole pipeline on the bundled samples, on CPU (called by `make demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
PY=python
OUT=work_dirs/tiny_demo
RM=work_dirs/tiny_demo_rm
TOK=work_dirs/tokenizer_demo
latest() { ls -d "$1"/checkpoint-* | sort -t- -k2 -n | tail -n 1; }

echo "== 1. compress the bundled samples into zstd shards"
$PY data/compress_data.py

echo "== 2. the mixture a training run draws (policy: configs/sample_policy/demo.json)"
$PY utils/inspect_mixture.py --data data/pretrain_data --policy configs/sample_policy/demo.json --tokens 100000

echo "== 3. the base model: a tiny Llama pretrained from scratch (stands in for a downloaded checkpoint)"
sh train_llms.sh configs/accelerate_configs/cpu.yaml configs/pretrain_configs/tiny_demo.yaml \
    configs/model_configs/tiny_llama.json
BASE=$(latest "$OUT")

echo "== 4. tokenizer: Chinese SentencePiece, merged into demo_base, chat tokens; the base model extended to it"
rm -rf "$TOK"
$PY utils/train_tokenizer.py --data data/pretrain_data/wiki_zh data/pretrain_data/qa_zh --vocab-size 3000 \
    --output "$TOK/zh_sp"
$PY utils/merge_tokenizer.py --base configs/tokenizers/demo_base --add "$TOK/zh_sp.model" --output "$TOK/merged" \
    --report-text eval_data/pretrain/nll.jsonl
$PY utils/add_chat_tokens.py --tokenizer "$TOK/merged" --output "$TOK/chat"
$PY utils/extend_model_token_embeddings.py --model "$BASE" --new-tokenizer "$TOK/chat" --output "$TOK/extended_model"

echo "== 5. continued pretraining of the extended model (new rows start at the mean embedding)"
sh train_llms.sh configs/accelerate_configs/cpu.yaml configs/pretrain_configs/tiny_cpt.yaml \
    train.ckpt="$TOK/extended_model"
CPT=$(latest work_dirs/tiny_cpt)

echo "== 6. instruction tuning (SFT) on the bundled chats, conversations packed"
sh train_llms.sh configs/accelerate_configs/cpu.yaml configs/sft_configs/tiny_demo.yaml train.ckpt="$CPT"
SFT=$(latest work_dirs/tiny_sft)

echo "== 7. reward model from the SFT checkpoint, on the bundled preference pairs"
sh train_reward_model.sh configs/accelerate_configs/cpu.yaml configs/reward_model_configs/tiny_demo.yaml \
    train.ckpt="$SFT"
RM_CKPT=$(latest "$RM")
$PY utils/score_pairs.py "$RM_CKPT" eval_data/reward_model/test_pairs.jsonl

echo "== 8. DPO of the SFT model on the preference pairs (reference: the SFT checkpoint)"
sh train_rl.sh configs/accelerate_configs/cpu.yaml configs/rl_configs/dpo_tiny_demo.yaml \
    train.ckpt="$SFT" data.tokenizer_path="$SFT"
DPO=$(latest work_dirs/tiny_dpo)

echo "== 9. GRPO of the SFT model against the reward model"
sh train_rl.sh configs/accelerate_configs/cpu.yaml configs/rl_configs/grpo_tiny_demo.yaml \
    train.ckpt="$SFT" data.tokenizer_path="$SFT" grpo.reward_model="$RM_CKPT"
GRPO=$(latest work_dirs/tiny_grpo)

echo
echo "== summary (also in work_dirs/demo_summary.md)"
$PY scripts/demo_summary.py

echo
echo "== done in $SECONDS s"
echo "base model:          $BASE  (metrics: $OUT/metrics.jsonl, plot: $OUT/tiny_demo.png, generations: $OUT/generation_eval/)"
echo "tokenizer:           $TOK/chat  (merge report: $TOK/merged/merge_report.json)"
echo "extended model:      $TOK/extended_model"
echo "continued pretrain:  $CPT  (metrics: work_dirs/tiny_cpt/metrics.jsonl)"
echo "SFT checkpoint:      $SFT  (generations: work_dirs/tiny_sft/generation_eval/)"
echo "reward model:        $RM_CKPT  (metrics: $RM/metrics.jsonl, delta histograms: $RM/reward_eval/)"
echo "DPO checkpoint:      $DPO  (metrics: work_dirs/tiny_dpo/metrics.jsonl)"
echo "GRPO checkpoint:     $GRPO  (greedy completions and rewards: work_dirs/tiny_grpo/grpo_eval/)"
