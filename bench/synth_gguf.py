#!/usr/bin/env python3
"""Writes a synthetic GGUF file with the shapes of Llama-3-8B and random Q4_K weights.

For the big-model benchmark (bench/big_model.sh) on machines that cannot download an 8B model:
32 blocks, d_model 4096, 32 query heads and 8 KV heads, d_mlp 14336, a vocabulary of 128,256,
RoPE base 500,000; every matrix (embedding and output head included) is Q4_K with random
blocks (seeded), norms are ones. The tokenizer is the default model's byte-level BPE (taken from
its GGUF file), padded with unused tokens to 128,256 entries, so prompts tokenize normally. Only
the numbers in the weights are random: generated text means nothing, the arithmetic and the
memory are an 8B model's.

    python3 bench/synth_gguf.py --tokenizer-from MODEL.gguf --out synth-8b.gguf [--seed 0]

About 4.9 GB on disk; needs the `gguf` and `numpy` packages.
"""

import argparse

import numpy as np

D, LAYERS, HEADS, KV_HEADS, MLP, VOCAB = 4096, 32, 32, 8, 14336, 128256
QK_K, Q4K_BYTES = 256, 144  # a Q4_K block: 256 weights in 144 bytes


def q4k(rng, rows, cols):
    """Random Q4_K blocks for a (rows, cols) matrix, as GGUF stores them.

    Block layout: d (f16), dmin (f16), 12 bytes of 6-bit sub-block scales and minimums, 128 bytes
    of 4-bit values; a weight is d·scale·q − dmin·min. d = 1e-4 and dmin = 7.5·d make the weights
    zero-mean with a spread of about 0.03 (random 6-bit scales and minimums, random values).
    """
    blocks = rows * (cols // QK_K)
    data = rng.integers(0, 256, size=(blocks, Q4K_BYTES), dtype=np.uint8)
    head = np.array([1e-4, 7.5e-4], dtype=np.float16).view(np.uint8)
    data[:, :4] = head
    return data.reshape(rows, cols // QK_K * Q4K_BYTES)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer-from", required=True, help="a GGUF file with a gpt2-style BPE tokenizer")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import gguf

    src = gguf.GGUFReader(a.tokenizer_from)

    def field(name):
        f = src.fields[name]
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            if f.types[-1] == gguf.GGUFValueType.STRING:
                return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            return [int(f.parts[i][0]) for i in f.data]
        if f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(f.parts[f.data[0]]).decode("utf-8")
        return f.parts[f.data[0]][0].item()

    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    merges = field("tokenizer.ggml.merges")
    if len(tokens) > VOCAB:
        raise SystemExit(f"{a.tokenizer_from}: {len(tokens)} tokens, more than {VOCAB}")
    unused = VOCAB - len(tokens)
    tokens += [f"<|unused_{i}|>" for i in range(unused)]
    types += [gguf.TokenType.UNUSED] * unused

    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name("synthetic Llama-3-8B shapes (random Q4_K weights)")
    w.add_context_length(8192)
    w.add_embedding_length(D)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(MLP)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    w.add_rope_dimension_count(D // HEADS)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(field("tokenizer.ggml.pre"))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(field("tokenizer.ggml.bos_token_id"))
    w.add_eos_token_id(field("tokenizer.ggml.eos_token_id"))

    rng = np.random.default_rng(a.seed)
    q = gguf.GGMLQuantizationType.Q4_K
    kv = D // HEADS * KV_HEADS
    ones = np.ones(D, dtype=np.float32)
    w.add_tensor("token_embd.weight", q4k(rng, VOCAB, D), raw_dtype=q)
    for l in range(LAYERS):
        p = f"blk.{l}."
        w.add_tensor(p + "attn_norm.weight", ones)
        w.add_tensor(p + "attn_q.weight", q4k(rng, D, D), raw_dtype=q)
        w.add_tensor(p + "attn_k.weight", q4k(rng, kv, D), raw_dtype=q)
        w.add_tensor(p + "attn_v.weight", q4k(rng, kv, D), raw_dtype=q)
        w.add_tensor(p + "attn_output.weight", q4k(rng, D, D), raw_dtype=q)
        w.add_tensor(p + "ffn_norm.weight", ones)
        w.add_tensor(p + "ffn_gate.weight", q4k(rng, MLP, D), raw_dtype=q)
        w.add_tensor(p + "ffn_up.weight", q4k(rng, MLP, D), raw_dtype=q)
        w.add_tensor(p + "ffn_down.weight", q4k(rng, D, MLP), raw_dtype=q)
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", q4k(rng, VOCAB, D), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()


if __name__ == "__main__":
    main()
