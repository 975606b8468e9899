#!/usr/bin/env python3
"""Writes a Hugging Face checkpoint with the default model's exact shapes and random weights.

For timing on machines that cannot download the model (a GPU machine with no network): the
matrix shapes, layer count, vocabulary and tokenizer are SmolLM2-135M-Instruct's, so every
workload does the same arithmetic as on the real model; only the numbers in the weights are
random (seeded), so generated text and trained words mean nothing.

    python3 bench/synth_model.py --tokenizer TOKENIZER_JSON --out DIR [--seed 0]

TOKENIZER_JSON is the default model's tokenizer.json (`bench/export_tokenizer.py` writes it
from the GGUF file; it is small enough to copy where the model cannot go).
"""

import argparse
import os
import shutil


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(a.seed)
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        hidden_act="silu",
    )
    model = LlamaForCausalLM(cfg).to(torch.float32).eval()
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, safe_serialization=True)
    shutil.copy(a.tokenizer, os.path.join(a.out, "tokenizer.json"))
    print(f"wrote {a.out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
