"""The reference side of benches/inference.sh: the same measurements as
benches/inference.rs, on PyTorch. Llama decode tokens/s with HF transformers
(LlamaForCausalLM, f32, greedy, KV cache) on the model directories the Rust bench wrote;
MiniLM sentences/s with sentence-transformers at batch 1 and 32 on the same sentences,
and (`onnx`) the same MiniLM exported with torch.onnx (the transformer, mean pooling and
normalization in one graph, dynamic batch and length) run by ONNX Runtime on the CPU, in
the same batches as sentence-transformers (sorted by length, padded per batch).
Prints one JSON line per measurement.

    python benches/inference_reference.py [llama|minilm|onnx] --models DIR

`onnx` needs onnxruntime, onnx and onnxscript beside torch.
"""
import json
import os
import statistics
import sys
import time

import torch

RUNS = 5
NEW_TOKENS = 64
PROMPT = "once upon a time the ferry crossed the river with people and their boat"
SHAPES = ["tiny-h64-l2", "small-h512-l8", "base-h768-l12"]


def llama(models):
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    for name in SHAPES:
        d = os.path.join(models, name)
        tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"))
        model = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
        ids = tok(PROMPT, return_tensors="pt").input_ids
        rates = []
        for run in range(RUNS + 1):
            with torch.inference_mode():
                # Time to first token, then the whole run: decode = (n - 1) / (total - ttft).
                t0 = time.perf_counter()
                model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
                ttft = time.perf_counter() - t0
                t0 = time.perf_counter()
                out = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
                total = time.perf_counter() - t0
            n = out.shape[1] - ids.shape[1]
            if run > 0:
                rates.append((n - 1) / (total - ttft))
        print(json.dumps({"bench": "llama_decode", "impl": "hf-transformers", "model": name,
                          "tokens_per_s": round(statistics.median(rates), 1)}), flush=True)


def minilm():
    d = os.environ.get("FERRY_MINILM_DIR")
    if not d:
        print("minilm: FERRY_MINILM_DIR is not set; skipped", file=sys.stderr)
        return
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(d, device="cpu")
    here = os.path.dirname(os.path.abspath(__file__))
    sentences = [l for l in open(os.path.join(here, "inference_sentences.txt")).read().splitlines() if l.strip()]
    for batch in (1, 32):
        rates = []
        for run in range(RUNS + 1):
            t0 = time.perf_counter()
            model.encode(sentences, batch_size=batch)
            if run > 0:
                rates.append(len(sentences) / (time.perf_counter() - t0))
        print(json.dumps({"bench": "minilm", "impl": "sentence-transformers", "batch": batch,
                          "sentences_per_s": round(statistics.median(rates), 1)}), flush=True)


def minilm_onnx(models):
    d = os.environ.get("FERRY_MINILM_DIR")
    if not d:
        print("onnx: FERRY_MINILM_DIR is not set; skipped", file=sys.stderr)
        return
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d)
    path = os.path.join(models, "minilm.onnx")
    if not os.path.exists(path):
        os.makedirs(models, exist_ok=True)
        bert = AutoModel.from_pretrained(d).eval()

        class Pipeline(torch.nn.Module):
            def __init__(self, bert):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask):
                hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(mean, p=2, dim=1)

        example = tok(["a sentence", "another one here"], padding=True, return_tensors="pt")
        torch.onnx.export(Pipeline(bert), (example["input_ids"], example["attention_mask"]), path,
                          input_names=["input_ids", "attention_mask"], output_names=["embeddings"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                        "embeddings": {0: "batch"}}, opset_version=17, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count()
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    here = os.path.dirname(os.path.abspath(__file__))
    sentences = [l for l in open(os.path.join(here, "inference_sentences.txt")).read().splitlines() if l.strip()]
    order = sorted(range(len(sentences)), key=lambda i: len(tok(sentences[i])["input_ids"]))
    for batch in (1, 32):
        rates = []
        for run in range(RUNS + 1):
            t0 = time.perf_counter()
            for i in range(0, len(order), batch):
                chunk = [sentences[j] for j in order[i:i + batch]]
                enc = tok(chunk, padding=True, truncation=True, max_length=256, return_tensors="np")
                session.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                                   "attention_mask": enc["attention_mask"].astype(np.int64)})
            if run > 0:
                rates.append(len(sentences) / (time.perf_counter() - t0))
        print(json.dumps({"bench": "minilm", "impl": "onnxruntime", "batch": batch,
                          "sentences_per_s": round(statistics.median(rates), 1)}), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    models = args[args.index("--models") + 1] if "--models" in args else "/tmp/ferry-bench-models"
    which = [a for a in args if a in ("llama", "minilm", "onnx")] or ["llama", "minilm"]
    torch.set_num_threads(os.cpu_count())
    if "llama" in which:
        llama(models)
    if "minilm" in which:
        minilm()
    if "onnx" in which:
        minilm_onnx(models)
