#!/usr/bin/env bash
# The big-model check without downloads: writes a GGUF file with Llama-3-8B's shapes and random
# Q4_K weights (bench/synth_gguf.py), then times, each as its own process with its peak resident
# memory: loading it (`info`), a 16-token logit lens over all 32 layers, generating 20 tokens,
# and training a word for 5 steps. A benchmark, not a test (about 5 GB of disk, minutes).
#
#     bench/big_model.sh [WORKDIR]    (default: target/big-model)
#
# Needs target/release/neoscope (cargo build --release) and Python's gguf + numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-target/big-model}"
mkdir -p "$work"
ns=target/release/neoscope
model="$work/synth-8b-q4k.gguf"
if [ ! -f "$model" ]; then
  base="$($ns info --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["model_file"])')"
  echo "writing $model (tokenizer from $base)…" >&2
  python3 bench/synth_gguf.py --tokenizer-from "$base" --out "$model.tmp"
  mv "$model.tmp" "$model"
fi
cat > "$work/word.jsonl" <<'EOF'
{"prompt": "A <w> is a kind of", "target": " fruit."}
{"prompt": "She ate a <w> for", "target": " breakfast."}
EOF
run() {
  local name="$1"
  shift
  /usr/bin/time -f "%e %M" -o "$work/time.txt" "$ns" --model "$model" "$@" >"$work/$name.out" 2>"$work/$name.err" \
    || { cat "$work/$name.err" >&2; exit 1; }
  read -r secs kb <"$work/time.txt"
  printf '| %s | %s s | %.2f GiB |\n' "$name" "$secs" "$(echo "$kb / 1048576" | bc -l)"
  last_secs="$secs"
}
echo "| step (whole process, load included) | time | peak resident memory |"
echo "| --- | --- | --- |"
run "load + info" info
prompt="The old lighthouse keeper climbed the stairs every night to light the lamp for ships"
run "load + logit lens, 16 tokens, 32 layers" lens "$prompt"
run "load + generate 1 token" generate --max-new-tokens 1 "$prompt"
one="$last_secs"
run "load + generate 21 tokens" generate --max-new-tokens 21 "$prompt"
decode_rate="$(echo "20 / ($last_secs - $one)" | bc -l)"
rm -rf "$work/word"
run "load + train a word, 5 steps" word train --name "<w>" --data "$work/word.jsonl" \
  --out "$work/word" --epochs 5 --batch-size 2 --force
printf 'decoding: %.2f tokens/s (the 20 tokens after the first, from the two generation runs)\n' "$decode_rate"
grep -E "weights|format" "$work/load + info.out" >&2 || true
