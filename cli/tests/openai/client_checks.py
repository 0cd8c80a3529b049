#!/usr/bin/env python3
"""The official `openai` Python client (PyPI) against a running `ferry dev`, for
cli/tests/openai.rs: `client_checks.py BASE_URL API_KEY CHAT_MODEL EMBED_MODEL`. Each check
prints `ok <name>`; the first failure raises (exit 1) with what was seen.
"""

import base64
import struct
import sys
import time

import httpx
import openai

base, key, chat_model, embed_model = sys.argv[1:5]
client = openai.OpenAI(base_url=f"{base}/openai/v1", api_key=key, max_retries=0)
native = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
MESSAGES = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Tell me about ferries."}]


def ok(name):
    print("ok", name, flush=True)


def job(job_id):
    r = native.get(f"/v1/jobs/{job_id}")
    r.raise_for_status()
    return r.json()


# models
ids = [m.id for m in client.models.list().data]
assert chat_model in ids and embed_model in ids, ids
ok("models")

# chat, not streamed: OpenAI's shape, and the same text as the native job with the same input
chat = client.chat.completions.create(model=chat_model, messages=MESSAGES, max_tokens=8, temperature=0)
assert chat.object == "chat.completion" and chat.id.startswith("chatcmpl-"), chat
choice = chat.choices[0]
assert choice.message.role == "assistant" and isinstance(choice.message.content, str), choice
assert choice.finish_reason in ("stop", "length"), choice
assert chat.usage.completion_tokens >= 1 and chat.usage.prompt_tokens > 0, chat.usage
assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
job_id = chat.id.removeprefix("chatcmpl-")
assert job(job_id)["status"] == "succeeded", job(job_id)
body = {"model": chat_model, "input": {"messages": MESSAGES}, "params": {"max_new_tokens": 8, "temperature": 0}}
r = native.post("/v1/jobs", json=body, headers={"Prefer": "wait=20"})
assert r.status_code == 200, r.text
assert r.json()["output"]["text"] == choice.message.content, (r.json(), choice)
ok("chat")

# logprobs, one per token
chat = client.chat.completions.create(model=chat_model, messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True)
content = chat.choices[0].logprobs.content
assert len(content) == chat.usage.completion_tokens, content
assert all(c.logprob <= 0 for c in content) and "".join(c.token for c in content) == chat.choices[0].message.content
ok("chat logprobs")

# chat streamed: the same text, role first, finish reason, usage, and tokens before the job ends
stream = client.chat.completions.create(
    model=chat_model, messages=MESSAGES, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}
)
chunks = list(stream)
assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
first = client.chat.completions.create(model=chat_model, messages=MESSAGES, max_tokens=8, temperature=0)
assert text == first.choices[0].message.content, (text, first)
finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
assert finishes in (["stop"], ["length"]), finishes
assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1, chunks[-1]
ok("chat stream")

long = client.chat.completions.create(model=chat_model, messages=MESSAGES, max_tokens=3000, temperature=0, stream=True)
seen = 0
for chunk in long:
    if chunk.choices and chunk.choices[0].delta.content:
        seen += 1
        if seen == 3:
            job_id = chunk.id.removeprefix("chatcmpl-")
            assert job(job_id)["status"] == "running", job(job_id)
            break
long.close()  # the client goes away mid-stream: its job is cancelled
deadline = time.time() + 15
while job(job_id)["status"] != "cancelled" and time.time() < deadline:
    time.sleep(0.1)
assert job(job_id)["status"] == "cancelled", job(job_id)
ok("stream tokens before the end, disconnect cancels")

# completions
comp = client.completions.create(model=chat_model, prompt="Once upon a time", max_tokens=5, temperature=0)
assert comp.object == "text_completion" and isinstance(comp.choices[0].text, str), comp
assert comp.usage.completion_tokens >= 1, comp.usage
ok("completions")

# embeddings: the native API's vectors, as floats and as base64
texts = ["A ferry crosses the river.", "GPUs scale to zero."]
emb = client.embeddings.create(model=embed_model, input=texts)
assert [d.index for d in emb.data] == [0, 1] and emb.object == "list", emb
r = native.post("/v1/jobs", json={"model": embed_model, "input": {"texts": texts}}, headers={"Prefer": "wait=20"})
assert r.status_code == 200, r.text
want = r.json()["output"]["embeddings"]
for d, w in zip(emb.data, want):
    assert len(d.embedding) == len(w) and max(abs(a - b) for a, b in zip(d.embedding, w)) < 1e-6
raw = client.embeddings.with_raw_response.create(model=embed_model, input="one", encoding_format="base64")
b64 = raw.http_response.json()["data"][0]["embedding"]
floats = struct.unpack(f"<{len(base64.b64decode(b64)) // 4}f", base64.b64decode(b64))
assert len(floats) == len(want[0]), len(floats)
ok("embeddings")

# idempotency: the same key is the same job
h = {"Idempotency-Key": "openai-idem-1"}
a = client.chat.completions.create(model=chat_model, messages=MESSAGES, max_tokens=3, temperature=0, extra_headers=h)
b = client.chat.completions.create(model=chat_model, messages=MESSAGES, max_tokens=3, temperature=0, extra_headers=h)
assert a.id == b.id, (a.id, b.id)
ok("idempotency")

# errors in OpenAI's shape, naming the parameter
def refused(kind, param, **kwargs):
    try:
        client.chat.completions.create(model=chat_model, messages=MESSAGES, **kwargs)
    except kind as e:
        assert e.body.get("param") == param, (param, e.body)
        return
    raise AssertionError(f"{kwargs} was accepted")


refused(openai.BadRequestError, "tools", tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
refused(openai.BadRequestError, "n", n=2)
refused(openai.BadRequestError, "max_tokens", max_tokens=0)
try:
    client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    raise AssertionError("an unknown model was accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "model", e.body
try:
    openai.OpenAI(base_url=f"{base}/openai/v1", api_key="wrong", max_retries=0).models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401
ok("errors")
