"""The peers of benches/families.rs (issue 14), run by benches/families.sh:

    families_reference.py write --models DIR     the models both sides run: per family a small
        random-weight model saved by HF transformers (hidden 512, 8 layers, 8 heads over 4 KV
        heads, MLP 1376, the 384-token fixtures tokenizer; each family's own features on:
        Qwen2's biases, Qwen3's QK norm, Mistral's and Gemma's sliding windows, Gemma 2's
        soft-capping, Phi-3's fused projections), `prompt_ids.json` (the prompts both sides
        decode from), and the ~60M-parameter Llama (hidden 512, 8 layers, MLP 1536, vocabulary
        32,000) as GGUF, written F32 by the `gguf` package's writer as llama.cpp's converter lays
        it out and quantized to Q4_K_M and Q8_0 by llama.cpp (make_gguf.py's code);
    families_reference.py transformers --models DIR [--only FAMILY]
        HF transformers `generate` on each family's model: batch 1 and 32 prompts in one
        left-padded batch, 64 greedy tokens each (min_new_tokens: exactly 64);
    families_reference.py llama-cpp FILE...
        llama.cpp (llama-cpp-python, built from source) on each GGUF file: 128 greedy decode
        steps after the prompt, batch 1.

Each prints one JSON line per measurement (median of 3 runs after a warm-up).
"""
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "executor", "tests", "fixtures", "gguf"))
TOKENIZER = os.path.join(HERE, "..", "executor", "tests", "fixtures", "families", "llama", "tokenizer.json")
RUNS = 3


def shape(**extra):
    base = dict(vocab_size=384, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                num_attention_heads=8, num_key_value_heads=4, head_dim=64, max_position_embeddings=512,
                rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=5)
    base.update(extra)
    return base


FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, shape()),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, shape(sliding_window=32)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, shape(tie_word_embeddings=True)),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, shape(tie_word_embeddings=True)),
    "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM, shape(head_dim=None)),
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
               shape(sliding_window=32, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=64)),
    "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM,
               shape(sliding_window=32, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=64)),
}


def prompts():
    lines = [l for l in open(os.path.join(HERE, "inference_sentences.txt")).read().splitlines() if l.strip()]
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=TOKENIZER)
    return [tok(" ".join(l.split()[:6]), add_special_tokens=False)["input_ids"] for l in lines[:32]]


def write(models):
    os.makedirs(models, exist_ok=True)
    with open(os.path.join(models, "prompt_ids.json"), "w") as f:
        json.dump(prompts(), f)
    for family, (config_class, model_class, params) in FAMILIES.items():
        d = os.path.join(models, f"family-{family}")
        torch.manual_seed(0)
        config = config_class(**{k: v for k, v in params.items() if v is not None})
        model_class(config).eval().save_pretrained(d)
        tok = transformers.PreTrainedTokenizerFast(tokenizer_file=TOKENIZER)
        tok.save_pretrained(d)
    write_gguf(models)


def write_gguf(models):
    import make_gguf

    tok = json.load(open(TOKENIZER))
    # The 60M shape: a 32,000-token vocabulary (the fixtures tokenizer's 384 tokens, then
    # padding tokens never produced by it).
    vocab = dict(tok["model"]["vocab"])
    for i in range(len(vocab), 32000):
        vocab[f"<pad{i}>"] = i
    tok["model"]["vocab"] = vocab
    make_gguf.VOCAB = 32000
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                                      num_attention_heads=8, num_key_value_heads=8, head_dim=64,
                                      max_position_embeddings=512, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                                      tie_word_embeddings=False, rope_theta=10000.0)
    model = transformers.LlamaForCausalLM(config).eval()
    params = sum(p.numel() for p in model.parameters())
    work = tempfile.mkdtemp(prefix="ferry-gguf-bench-")
    src = os.path.join(work, "llama-60m-f32.gguf")
    template = open(os.path.join(make_gguf.CHAT, "llama3.jinja")).read()
    make_gguf.write_f32_gguf(src, "llama", config, model, tok, template)
    out = os.path.join(models, "gguf")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    for kind in ["Q4_K_M", "Q8_0"]:
        make_gguf.quantize(src, os.path.join(out, f"llama-60m-{kind}.gguf"), kind)
    print(json.dumps({"wrote": out, "parameters": params}), file=sys.stderr)


def bench_transformers(models, only):
    torch.set_num_threads(os.cpu_count())
    ids = json.load(open(os.path.join(models, "prompt_ids.json")))
    for family, (_, model_class, _) in FAMILIES.items():
        if only and family != only:
            continue
        model = model_class.from_pretrained(os.path.join(models, f"family-{family}"), dtype=torch.float32).eval()
        for jobs in [1, 32]:
            batch = ids[:jobs]
            width = max(len(p) for p in batch)
            input_ids = torch.tensor([[5] * (width - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            rates = []
            for run in range(RUNS + 1):
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=64,
                                         min_new_tokens=64, do_sample=False, pad_token_id=5)
                    secs = time.perf_counter() - t0
                if run > 0:
                    rates.append(jobs * (out.shape[1] - width) / secs)
            print(json.dumps({"bench": "family", "impl": "hf-transformers", "family": family, "jobs": jobs,
                              "tokens_per_s": round(statistics.median(rates), 1)}), flush=True)


def bench_llama_cpp(files, models):
    import llama_cpp

    ids = json.load(open(os.path.join(models, "prompt_ids.json")))[0]
    for path in files:
        t0 = time.perf_counter()
        # llama.cpp's defaults (an f16 KV cache, flash attention as it decides); every row's
        # logits kept, for the argmax.
        llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_batch=512, n_threads=os.cpu_count(), verbose=False,
                              logits_all=True)
        load_s = time.perf_counter() - t0
        rates = []
        for run in range(RUNS + 1):
            llm.reset()
            llm.eval(ids)
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            t0 = time.perf_counter()
            for _ in range(128):
                llm.eval([nxt])
                nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            secs = time.perf_counter() - t0
            if run > 0:
                rates.append(128 / secs)
        print(json.dumps({"bench": "gguf", "impl": "llama.cpp", "file": os.path.basename(path), "jobs": 1,
                          "tokens_per_s": round(statistics.median(rates), 1), "load_s": round(load_s, 3)}),
              flush=True)
        llm.close()


def main():
    args = sys.argv[1:]
    flag = lambda name, default=None: args[args.index(name) + 1] if name in args else default
    models = flag("--models", os.path.join(tempfile.gettempdir(), "ferry-bench-models"))
    if args[0] == "write":
        write(models)
    elif args[0] == "transformers":
        bench_transformers(models, flag("--only"))
    elif args[0] == "llama-cpp":
        bench_llama_cpp([a for a in args[1:] if a.endswith(".gguf")], models)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
