"""The reference side of benches/engine.sh: HF transformers `generate` on the model
directory benches/engine.rs wrote (small-h512-l8), the same prompts as one padded batch
(static batching: left padding, greedy, KV cache, exactly 128 new tokens each), at 1, 8
and 32 prompts. Prints one JSON line per measurement.

    python benches/engine_reference.py --models DIR [--device cuda --shape llama-1b --jobs 1,8,32,128]

On CUDA the model runs in bf16 (SDPA attention), as Ferry's engine does there.
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
    flag = lambda name, default: args[args.index(name) + 1] if name in args else default
    device = flag("--device", "cpu")
    shape = flag("--shape", "small-h512-l8")
    bursts = [int(j) for j in flag("--jobs", "1,8,32").split(",")]
    torch.set_num_threads(os.cpu_count())
    d = os.path.join(models, shape)
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"))
    tok.pad_token, tok.padding_side = "<unk>", "left"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = LlamaForCausalLM.from_pretrained(d, dtype=dtype).eval().to(device)
    for jobs in bursts:
        batch = tok(prompts(jobs), return_tensors="pt", padding=True).to(device)
        rates = []
        for run in range(RUNS + 1):
            with torch.inference_mode():
                t0 = time.perf_counter()
                out = model.generate(**batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                     do_sample=False, pad_token_id=tok.pad_token_id)
                if device != "cpu":
                    torch.cuda.synchronize()
                secs = time.perf_counter() - t0
            if run > 0:
                rates.append(jobs * (out.shape[1] - batch.input_ids.shape[1]) / secs)
        print(json.dumps({"bench": "engine", "impl": "hf-transformers-padded-batch", "device": device, "shape": shape,
                          "jobs": jobs,
                          "tokens_per_s": round(statistics.median(rates), 1)}), flush=True)


if __name__ == "__main__":
    main()
