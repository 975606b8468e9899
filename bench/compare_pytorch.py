#!/usr/bin/env python3
"""Neoscope vs PyTorch + transformers on the same model, machine and inputs, side by side.

Runs `neoscope bench --json` and a PyTorch implementation of the very same workloads (the token
ids, training sequences, initial vector, batch order and hyperparameters come from Neoscope's
report), alternating the two programs for --rounds rounds. Each program runs as a child process
so its peak resident memory is measured the same way (wait4's ru_maxrss). Reports per-workload
medians, the ratio Neoscope/PyTorch and how far the results agree (training losses, lens
probabilities, greedy tokens).

    pip install -r bench/requirements.txt
    cargo build --release
    python3 bench/compare_pytorch.py [--neoscope target/release/neoscope] [--rounds 2] [--out bench/results.json]

`--model gemma3-270m` (after `neoscope fetch gemma3-270m --accept-gemma-terms`) compares on Gemma 3
270M; PyTorch reads the same GGUF (dequantized to f32 by transformers) and Neoscope is given
`--dtype f32` so both compute in f32.

`--scratch` compares instead the from-scratch lab's training step (the lab's default model,
the lesson's and the modern block; bench/scratch_torch.py is the PyTorch side), both on the same
random batches and thread count.

On a GPU: `--device cuda` runs both sides there (Neoscope built with `--features cuda`), and
`--model DIR` benchmarks a Hugging Face folder instead of the default model (see
bench/synth_model.py for a same-shape checkpoint where the model cannot be downloaded).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

RUNS = 5


def run_child(cmd):
    """Runs cmd, returns (stdout, peak RSS in MiB)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed with exit code {p.returncode}")
    return out.decode(), ru.ru_maxrss / 1024.0


SYNC = lambda: None  # torch.cuda.synchronize on a GPU: a timing ends when the work has


def timed(fn, runs=RUNS, warmup=True):
    if warmup:
        fn()
        SYNC()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        SYNC()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def worker(report_path, model_path, threads, device):
    """The PyTorch side: the same workloads as `neoscope bench`, printed as one JSON object."""
    global SYNC
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    if device == "cuda":
        SYNC = torch.cuda.synchronize
        torch.set_default_device("cuda")
        # Plain f32 matmuls, as Neoscope's (no TF32 rounding).
        torch.backends.cuda.matmul.allow_tf32 = False
    rep = json.load(open(report_path))
    w = rep["workloads"]
    if os.path.isdir(model_path):
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(model_path), gguf_file=os.path.basename(model_path), dtype=torch.float32
        )
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    out = {}

    ids64 = torch.tensor([rep["input_ids"]])
    # PyTorch at its best: inference_mode (no autograd bookkeeping), no KV cache built on
    # single passes, and generation as a plain greedy loop over the cache (not generate()).
    with torch.inference_mode():
        out["forward_1x64_s"] = timed(lambda: model(ids64, use_cache=False).logits.sum().item())
        rows = w["batch_rows"]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        out["forward_8x24_s"] = timed(
            lambda: model(ids, attention_mask=mask, use_cache=False).logits.sum().item()
        )
        prompt = torch.tensor([w["generate_prompt"]])

        def gen():
            o = model(prompt, use_cache=True)
            past, nxt = o.past_key_values, int(o.logits[0, -1].argmax())
            new = [nxt]
            for _ in range(49):
                o = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past, nxt = o.past_key_values, int(o.logits[0, -1].argmax())
                new.append(nxt)
            return new

        g = timed(gen)
        out["generate_50_tokens_per_s"] = 50.0 / g
        new = gen()
        out["generated_same_tokens"] = sum(a == b for a, b in zip(new, w["generated"]))

        def lens(ids, k):
            hs = model(
                torch.tensor([ids]), output_hidden_states=True, use_cache=False
            ).hidden_states
            n = len(hs) - 1
            # hidden_states[l+1] is the residual after block l; the last one is already normed.
            per_layer = [model.model.norm(hs[l + 1]) for l in range(n - 1)] + [hs[n]]
            logp = [torch.log_softmax(model.lm_head(h)[0], -1) for h in per_layer]
            final = logp[-1]
            cells = []
            for lp in logp:
                p = lp.exp()
                top = torch.topk(p, k, dim=-1)
                ent = -(p * lp).sum(-1)
                kl = (final.exp() * (final - lp)).sum(-1)
                cells.append((top, ent, kl))
            return cells

        out["lens_16_tokens_s"] = timed(lambda: lens(w["lens_16_ids"], 10))
        out["lens_12_tokens_top5_s"] = timed(lambda: lens(w["lens_12_ids"], 5))
        cells = lens(w["lens_12_ids"], 5)
        diff = 0.0
        for (top, _, _), ref in zip(cells, w["lens_12_last_top5"]):
            vals, idx = top.values[-1].tolist(), top.indices[-1].tolist()
            for (_, rp), v in zip(ref, vals):
                diff = max(diff, abs(rp - v))
        out["lens_max_prob_diff"] = diff

    t = w["train"]
    seqs = t["seqs"]
    embed = model.get_input_embeddings()

    def batch_loss(vec, batch):
        rows = [seqs[i] for i in batch]
        width = max(len(s["ids"]) for s in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        word = torch.zeros(len(rows), width, 1)
        for r, s in enumerate(rows):
            ids[r, : len(s["ids"])] = torch.tensor(s["ids"])
            mask[r, : len(s["ids"])] = 1
            for p in s["word_positions"]:
                word[r, p, 0] = 1.0
        x = embed(ids)
        # Gemma's embedding module scales its rows by sqrt(d); the word's vector, a raw row as in
        # Neoscope, is scaled the same way.
        x = x * (1 - word) + word * vec * getattr(embed, "embed_scale", 1.0)
        h = model.model(inputs_embeds=x, attention_mask=mask, use_cache=False).last_hidden_state
        total = 0.0
        for r, s in enumerate(rows):
            pos = torch.tensor([p for p, _ in s["targets"]])
            tgt = torch.tensor([i for _, i in s["targets"]])
            # Only the scored positions are unembedded, as Neoscope does.
            lp = torch.log_softmax(model.lm_head(h[r, pos]), -1)
            total = total + lp[torch.arange(len(tgt)), tgt].mean()
        return -total / len(rows)

    def run(batches, nudge=0.0):
        vec = torch.tensor(t["init_vector"])
        if nudge:
            g = torch.Generator(device=vec.device).manual_seed(0)
            vec = vec + nudge * torch.randn(vec.shape, generator=g, device=vec.device)
        vec.requires_grad_(True)
        opt = torch.optim.AdamW([vec], lr=t["lr"], betas=(0.9, 0.999), eps=1e-8,
                                weight_decay=t["weight_decay"])
        losses = []
        for b in batches:
            loss = batch_loss(vec, b)
            opt.zero_grad()
            loss.backward()
            clip = t["clip_norm"]
            if clip is not None:
                norm = vec.grad.norm().item()
                if norm > clip:
                    vec.grad.mul_(clip / norm)
            opt.step()
            losses.append(loss.item())
        return losses

    out["train_step_4x24_s"] = timed(lambda: run([t["step_batch"]]))
    times = []
    for _ in range(3):
        s = time.perf_counter()
        losses = run(t["run_batches"])
        times.append(time.perf_counter() - s)
    out["train_20_epochs_8_examples_s"] = statistics.median(times)
    ref = t["run_losses"]
    diffs = [abs(a - b) for a, b in zip(losses, ref)]
    out["train_first10_max_loss_diff"] = max(diffs[:10])
    out["train_max_loss_diff"] = max(diffs)
    last = len(ref) // 20  # steps per epoch
    out["train_last_epoch_mean_diff"] = abs(sum(losses[-last:]) - sum(ref[-last:])) / last
    # Control: the same PyTorch run from an initial vector nudged by 1e-7 noise. Adam turns
    # rounding-sized differences into ±lr steps for coordinates with near-zero gradients, so
    # two correct implementations drift apart after some steps; this shows how far.
    nudged = run(t["run_batches"], nudge=1e-7)
    out["train_control_max_loss_diff"] = max(abs(a - b) for a, b in zip(losses, nudged))
    out["threads"] = torch.get_num_threads()
    print(json.dumps(out))


WORKLOADS = [
    ("forward 1×64", "forward_1x64_s", "s"),
    ("forward 8×24 padded", "forward_8x24_s", "s"),
    ("generation, 50 tokens", "generate_50_tokens_per_s", "tokens/s"),
    ("logit lens, 16 tokens, top-10", "lens_16_tokens_s", "s"),
    ("logit lens, 12 tokens, top-5", "lens_12_tokens_top5_s", "s"),
    ("training step 4×~22", "train_step_4x24_s", "s"),
    ("20-epoch neologism run", "train_20_epochs_8_examples_s", "s"),
]


def scratch(a):
    """The lab's training step, Neoscope then PyTorch, alternating, for both blocks."""
    here = os.path.dirname(os.path.abspath(__file__))
    lines = ["| training step (batch 12 × 64, 4 layers, width 128) | Neoscope | PyTorch | Neoscope/PyTorch time |",
             "| --- | --- | --- | --- |"]
    rows = []
    for arch in ["seed", "modern"]:
        ours, theirs = [], []
        for r in range(a.rounds):
            print(f"round {r + 1}/{a.rounds}: {arch}", file=sys.stderr)
            out = subprocess.check_output([a.neoscope, "--device", a.device, "scratch", "bench", "--json",
                                           "--arch", arch, "--steps", "20"], stderr=subprocess.DEVNULL)
            rep = json.loads(out)["Bench"]
            ours.append(rep)
            spec = {"threads": rep["threads"], "vocab": 65, "batch": 12, "steps": 20,
                    "model": {"arch": arch.capitalize(), "n_layers": 4, "n_heads": 4, "d_model": 128,
                              "d_ff": 512, "n_ctx": 64}}
            theirs.append(json.loads(subprocess.check_output(
                [sys.executable, os.path.join(here, "scratch_torch.py"), json.dumps(spec)])))
        n = statistics.median(x["step_s"] for x in ours)
        p = statistics.median(x["step_s"] for x in theirs)
        rows.append({"workload": f"scratch training step ({arch})", "neoscope": n, "pytorch": p, "ratio": n / p,
                     "params": [ours[0]["params"], theirs[0]["params"]]})
        lines.append(f"| {arch} block ({ours[0]['params']} / {theirs[0]['params']} parameters) | "
                     f"{n:.4f} s | {p:.4f} s | {n / p:.2f} |")
    lines.insert(0, f"Machine: {os.cpu_count()} CPUs, {ours[0]['threads']} threads each; {a.rounds} alternating rounds, medians of 20 steps.\n")
    print("\n".join(lines))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"rows": rows, "table": lines}, f, indent=1)


def lora_worker(report_path, model_path, threads):
    """PyTorch + PEFT: the same phase-2 step as `neoscope inject lora-bench` (same blocks, r, alpha,
    dropout, targets, AdamW with decoupled decay, clipping at 1.0), printed as JSON."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    rep = json.load(open(report_path))
    c = rep["config"]
    if os.path.isdir(model_path):
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(model_path), gguf_file=os.path.basename(model_path), dtype=torch.float32
        )
    names = {"Q": "q_proj", "K": "k_proj", "V": "v_proj", "O": "o_proj", "Gate": "gate_proj",
             "Up": "up_proj", "Down": "down_proj"}
    peft = get_peft_model(model, LoraConfig(r=c["rank"], lora_alpha=c["alpha"], lora_dropout=c["dropout"],
                                            target_modules=[names[t] for t in c["targets"]], bias="none"))
    peft.train()
    params = [p for p in peft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=c["lr"], betas=(0.9, 0.999), eps=c["adam_eps"],
                            weight_decay=c["weight_decay"])
    ids = torch.tensor(rep["blocks"])
    times, losses = [], []
    for _ in range(len(rep["step_s"])):
        t = time.perf_counter()
        loss = peft(input_ids=ids, labels=ids, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, c["clip_norm"])
        opt.step()
        losses.append(loss.item())
        times.append(time.perf_counter() - t)
    print(json.dumps({"step_s": times, "median_step_s": statistics.median(times[1:]), "losses": losses,
                      "parameters": sum(p.numel() for p in params), "threads": torch.get_num_threads()}))


def lora(a):
    """Phase 2's LoRA training step, Neoscope then PyTorch + PEFT, alternating."""
    ns = [a.neoscope, "--device", a.device] + (["--model", a.model] if a.model else [])
    ns += ["--dtype", a.dtype or "f32"]
    info = json.loads(subprocess.check_output(ns + ["info", "--json"], stderr=subprocess.DEVNULL))
    model_path = info["model_file"] if not a.model or not os.path.exists(a.model) else a.model
    report_path = os.path.abspath(".neoscope-lora-report.json")
    ours, theirs = [], []
    for r in range(a.rounds):
        print(f"round {r + 1}/{a.rounds}: neoscope inject lora-bench", file=sys.stderr)
        rep = json.loads(subprocess.check_output(ns + ["inject", "lora-bench", "--json", "--steps", "5"],
                                                 stderr=subprocess.DEVNULL))
        ours.append(rep)
        with open(report_path, "w") as f:
            json.dump(rep, f)
        print(f"round {r + 1}/{a.rounds}: PyTorch + PEFT", file=sys.stderr)
        theirs.append(json.loads(subprocess.check_output(
            [sys.executable, __file__, "--lora-worker", report_path, model_path, str(rep["threads"])])))
    os.remove(report_path)
    n = statistics.median(x["median_step_s"] for x in ours)
    p = statistics.median(x["median_step_s"] for x in theirs)
    lines = [f"Machine: {os.cpu_count()} CPUs, {ours[0]['threads']} threads each; model {info['name']}; "
             f"{a.rounds} alternating rounds, medians of 5 steps after a warm-up.", "",
             "| LoRA training step (8 × 64 tokens, r 8, all seven projections) | Neoscope | PyTorch + PEFT | Neoscope/PyTorch time |",
             "| --- | --- | --- | --- |",
             f"| {ours[0]['parameters']} / {theirs[0]['parameters']} adapter parameters | {n:.3f} s | {p:.3f} s | {n / p:.2f} |",
             "", f"First-step losses: Neoscope {ours[0]['losses'][0]:.4f}, PyTorch {theirs[0]['losses'][0]:.4f} "
             "(dropout masks differ; Neoscope's vocabulary has one injected row more)."]
    print("\n".join(lines))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"rows": [{"workload": "LoRA training step 8x64", "neoscope": n, "pytorch": p, "ratio": n / p}],
                       "neoscope": ours, "pytorch": theirs, "table": lines}, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neoscope", default="target/release/neoscope")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default=None, help="a GGUF file or Hugging Face folder (default: the default model)")
    ap.add_argument("--dtype", default=None, choices=["f32", "bf16", "f16", "quantized"],
                    help="Neoscope's weight type (PyTorch stays f32): `quantized` keeps the GGUF file's blocks")
    ap.add_argument("--scratch", action="store_true", help="compare the from-scratch lab's training step")
    ap.add_argument("--lora", action="store_true", help="compare phase 2's LoRA training step with PyTorch + PEFT")
    ap.add_argument("--lora-worker", nargs=3, metavar=("REPORT", "MODEL", "THREADS"), help=argparse.SUPPRESS)
    ap.add_argument("--worker", nargs=4, metavar=("REPORT", "MODEL", "THREADS", "DEVICE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], a.worker[1], int(a.worker[2]), a.worker[3])
        return
    if a.scratch:
        scratch(a)
        return
    if a.lora_worker:
        lora_worker(a.lora_worker[0], a.lora_worker[1], int(a.lora_worker[2]))
        return
    if a.lora:
        lora(a)
        return
    ns = [a.neoscope, "--device", a.device] + (["--model", a.model] if a.model else [])
    ns += ["--dtype", a.dtype or "f32"]
    info = json.loads(subprocess.check_output(ns + ["info", "--json"], stderr=subprocess.DEVNULL))
    ours, theirs = [], []
    report_path = os.path.abspath(".neoscope-bench-report.json")
    for r in range(a.rounds):
        print(f"round {r + 1}/{a.rounds}: neoscope bench", file=sys.stderr)
        text, rss = run_child(ns + ["bench", "--json"])
        rep = json.loads(text)
        rep["peak_rss_mib"] = rss
        ours.append(rep)
        with open(report_path, "w") as f:
            json.dump(rep, f)
        print(f"round {r + 1}/{a.rounds}: PyTorch", file=sys.stderr)
        model_path = info["model_file"] if not a.model or not os.path.exists(a.model) else a.model
        text, rss = run_child([sys.executable, __file__, "--worker", report_path, model_path, str(rep["threads"]), a.device])
        res = json.loads(text)
        res["peak_rss_mib"] = rss
        theirs.append(res)
    os.remove(report_path)
    med = lambda runs, k: statistics.median(x[k] for x in runs)
    rows = []
    lines = [
        f"Machine: {os.cpu_count()} CPUs, {ours[0]['threads']} threads each; device {a.device}; model {info['name']} "
        f"(Neoscope's weights {a.dtype or 'f32'}, PyTorch's f32); "
        f"{a.rounds} alternating rounds, medians.",
        "",
        "| workload | Neoscope | PyTorch | Neoscope/PyTorch time |",
        "| --- | --- | --- | --- |",
    ]
    for name, key, unit in WORKLOADS:
        n, p = med(ours, key), med(theirs, key)
        ratio = p / n if unit == "tokens/s" else n / p
        rows.append({"workload": name, "neoscope": n, "pytorch": p, "unit": unit, "ratio": ratio})
        fmt = (lambda v: f"{v:.1f} {unit}") if unit == "tokens/s" else (lambda v: f"{v:.3f} s")
        lines.append(f"| {name} | {fmt(n)} | {fmt(p)} | {ratio:.2f} |")
    rn, rp = max(x["peak_rss_mib"] for x in ours), max(x["peak_rss_mib"] for x in theirs)
    lines.append(f"| peak resident memory (whole benchmark) | {rn:.0f} MiB | {rp:.0f} MiB | {rn / rp:.2f} |")
    lines += [
        "",
        f"Agreement: training losses differ by at most "
        f"{max(x['train_first10_max_loss_diff'] for x in theirs):.1e} over the first 10 steps and "
        f"{max(x['train_max_loss_diff'] for x in theirs):.2f} over all 40 (last-epoch mean "
        f"{max(x['train_last_epoch_mean_diff'] for x in theirs):.3f}); PyTorch against itself with "
        f"the initial vector nudged by 1e-7 drifts by "
        f"{max(x['train_control_max_loss_diff'] for x in theirs):.2f} (Adam amplifies rounding). "
        f"Largest lens probability difference "
        f"{max(x['lens_max_prob_diff'] for x in theirs):.2e}; greedy tokens identical: "
        f"{min(x['generated_same_tokens'] for x in theirs)}/50.",
    ]
    print("\n".join(lines))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"rows": rows, "neoscope": ours, "pytorch": theirs, "table": lines}, f, indent=1)


if __name__ == "__main__":
    main()
