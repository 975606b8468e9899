#!/usr/bin/env bash
# Regenerates corpus.txt: text written by the default model itself
# (SmolLM2-135M-Instruct, Q4_1 GGUF) answering varied chat prompts, sampled with temperature
# 0.8, top-p 0.95 and seed = prompt number, 200 new tokens each. Provenance: entirely
# model-generated; no outside text. Usage: bash assets/corpus/make_corpus.sh [path/to/neoscope]
# The output is deterministic per prompt (seed = prompt number), so appending prompts and
# regenerating only the new ones gives the same file as regenerating all of them.
set -euo pipefail
bin=${1:-target/release/neoscope}
out=$(dirname "$0")/corpus.txt
tmp=$(mktemp)
i=0
while IFS= read -r prompt; do
  [ -z "$prompt" ] && continue
  i=$((i + 1))
  "$bin" generate --chat --max-new-tokens 200 --temperature 0.8 --top-p 0.95 --seed "$i" "$prompt" 2>/dev/null >> "$tmp"
  printf '\n\n' >> "$tmp"
done < "$(dirname "$0")/prompts.txt"
mv "$tmp" "$out"
echo "wrote $out ($(wc -w < "$out") words)"
