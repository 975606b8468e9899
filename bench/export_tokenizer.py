#!/usr/bin/env python3
"""Writes the tokenizer.json of a GGUF model (by default Neoscope's cached default model).

    python3 bench/export_tokenizer.py [--gguf FILE] --out tokenizer.json
"""

import argparse
import os
import shutil
import tempfile


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--gguf",
        default=os.path.expanduser("~/.cache/neoscope/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    )
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(a.gguf), gguf_file=os.path.basename(a.gguf))
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        shutil.copy(os.path.join(d, "tokenizer.json"), a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
