"""The reference side of benches/engine.sh: HF transformers `generate` on the model
directory benches/engine.rs wrote (small-h512-l8), the same prompts as one padded batch
(static batching: left padding, greedy, KV cache, exactly 128 new tokens each), at 1, 8
and 32 prompts. Prints one JSON line per measurement.

    python benches/engine_reference.py --models DIR
"""
import json
import os
import statistics
import sys
import time

import torch

RUNS = 3
NEW_TOKENS = 128


def prompts(n):
    here = os.path.dirname(os.path.abspath(__file__))
    lines = [l for l in open(os.path.join(here, "inference_sentences.txt")).read().splitlines() if l.strip()]
    return [" ".join(l.split()[:6]) for l in lines[:n]]


def main():
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    args = sys.argv[1:]
    models = args[args.index("--models") + 1] if "--models" in args else "/tmp/ferry-bench-models"
    torch.set_num_threads(os.cpu_count())
    d = os.path.join(models, "small-h512-l8")
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"))
    tok.pad_token, tok.padding_side = "<unk>", "left"
    model = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    for jobs in (1, 8, 32):
        batch = tok(prompts(jobs), return_tensors="pt", padding=True)
        rates = []
        for run in range(RUNS + 1):
            with torch.inference_mode():
                t0 = time.perf_counter()
                out = model.generate(**batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                     do_sample=False, pad_token_id=tok.pad_token_id)
                secs = time.perf_counter() - t0
            if run > 0:
                rates.append(jobs * (out.shape[1] - batch.input_ids.shape[1]) / secs)
        print(json.dumps({"bench": "engine", "impl": "hf-transformers-padded-batch", "jobs": jobs,
                          "tokens_per_s": round(statistics.median(rates), 1)}), flush=True)


if __name__ == "__main__":
    main()
