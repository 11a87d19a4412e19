#!/usr/bin/env bash
# One-shot check of a machine with a GPU, under 10 minutes, one table (bench/gpu_check.py): the codec's
# encode/decode real-time factor, AR tokens/s, the first-hitting vs the ancestral sampler, and a short
# bf16 training run per family (codec, image tokenizer, AR, masked diffusion).
#   bash scripts/gpu_check.sh                      # on the first CUDA device
#   bash scripts/gpu_check.sh --device cpu --train-steps 4 --seconds 10
# Installs mmtok and builds the corpora it reads when they are missing (a few minutes the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
make setup
[ -f data/speech/corpus.json ] || .venv/bin/mmtok data speech --out data/speech --num-utterances 400
[ -f data/digits/corpus.json ] || .venv/bin/mmtok data digits --out data/digits --image-size 32
exec .venv/bin/python bench/gpu_check.py "$@"
