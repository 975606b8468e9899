"""The from-scratch lab's training step in PyTorch, for `compare_pytorch.py --scratch`.

The same model as Neoscope's lab (the lesson's model: embedding × √d + sinusoidal positions,
PyTorch's own nn.TransformerEncoderLayer stack, post-norm, ReLU, causal mask, output layer with
bias; or the modern block: transformers' LlamaForCausalLM), the same batch of random windows,
the same step (cross-entropy, backward, global-norm clipping at 1.0, AdamW with decay on
matrices), the same thread count. Prints one JSON object: the median seconds per step.
"""

import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Seed(nn.Module):
    def __init__(self, vocab, d, heads, layers, ff, ctx):
        super().__init__()
        self.d = d
        self.embedding = nn.Embedding(vocab, d)
        pos = torch.arange(ctx).unsqueeze(1)
        div = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
        pe = torch.zeros(ctx, d)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe, persistent=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx), persistent=False)
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True)
        self.transformer_encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.output_layer = nn.Linear(d, vocab)
        # The lesson's initialisation.
        self.embedding.weight.data.uniform_(-0.1, 0.1)
        self.output_layer.weight.data.uniform_(-0.1, 0.1)
        self.output_layer.bias.data.zero_()

    def forward(self, x):
        h = self.embedding(x) * math.sqrt(self.d) + self.pe[: x.size(1)]
        return self.output_layer(self.transformer_encoder(h, mask=self.mask, is_causal=True))


class Modern(nn.Module):
    def __init__(self, vocab, d, heads, layers, ff, ctx):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=ff,
                          num_hidden_layers=layers, num_attention_heads=heads,
                          max_position_embeddings=ctx, rms_norm_eps=1e-6,
                          rope_theta=10000.0, tie_word_embeddings=False, attention_bias=False,
                          mlp_bias=False, attn_implementation="sdpa")
        self.m = LlamaForCausalLM(cfg)

    def forward(self, x):
        return self.m(input_ids=x, use_cache=False).logits

    def state_dict_named(self):
        """The parameters under Neoscope's (Hugging Face Llama) names."""
        return self.m.state_dict()


def main(spec_json):
    s = json.loads(spec_json)
    torch.set_num_threads(s["threads"])
    m = s["model"]
    cls = Seed if m["arch"] == "Seed" else Modern
    vocab, ctx, batch = s["vocab"], m["n_ctx"], s["batch"]
    model = cls(vocab, m["d_model"], m["n_heads"], m["n_layers"], m["d_ff"], ctx)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": rest, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (20_000,), generator=g)
    model.train()
    times = []
    for i in range(s["steps"] + 3):
        t = time.perf_counter()
        st = torch.randint(0, len(ids) - ctx - 1, (batch,), generator=g)
        x = torch.stack([ids[j:j + ctx] for j in st])
        y = torch.stack([ids[j + 1:j + ctx + 1] for j in st])
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    print(json.dumps({"step_s": statistics.median(times), "all_s": times,
                      "params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__}))


if __name__ == "__main__":
    main(sys.argv[1])
