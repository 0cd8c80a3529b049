#!/usr/bin/env python3
"""A research agent as a Ferry handler (per-job mode): the shape of the 3-15 minute task
Ferry was built for, in about a hundred lines and the standard library only.

Input (one JSON line on stdin):
    {"question": "...", "sources": [{"title": "...", "text": "..."} | {"url": "https://..."}],
     "model_url"?: "https://<ferry>/openai/v1/chat/completions", "model"?: "...",
     "max_notes"?: 20, "max_tokens"?: 512, "pause_s"?: 0}
Steps, each reported as a `percentage` event (and a `log` line):
    1. plan       split the question into the terms to look for;
    2. fetch      read every source (inline text, or fetched over HTTP);
    3. read       pick, per source, the sentences that mention the terms;
    4. synthesize ask a chat model for a summary when `model_url` is given (any
                  OpenAI-compatible endpoint, Ferry's own included; FERRY_AGENT_API_KEY is
                  its key), else rank the picked sentences;
    5. write      the report, in Markdown, as the job's `output`.
A draft is written as an `output` after step 3, so a cancelled or timed-out job keeps it
as its partial output. A source that cannot be fetched is a warning, not a failure; an
endpoint that answers 429 or 5xx makes the job exit 75, asking Ferry for another attempt.

Run it on `ferry dev`:
    ferry dev --handler 'research-agent=python3 examples/handlers/research_agent.py'
"""

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request

STEPS = ["plan", "fetch", "read", "synthesize", "write"]


def emit(**event):
    print(json.dumps(event), flush=True)


def step(n, message):
    emit(type="log", level="info", message=f"step {n + 1}/{len(STEPS)}: {message}")


def done(n, message=None):
    emit(type="percentage", percent=round(100 * (n + 1) / len(STEPS), 1), message=message)


def post_json(url, body, key):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("content-type", "application/json")
    if key:
        request.add_header("authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.load(answer)


def fetch(source):
    if "text" in source:
        return source.get("title", "untitled"), source["text"]
    with urllib.request.urlopen(source["url"], timeout=30) as answer:
        body = answer.read(2_000_000).decode("utf-8", "replace")
    return source["url"], re.sub(r"<[^>]+>", " ", body)


def main():
    job = json.loads(sys.stdin.readline())
    question, pause = job["question"], float(job.get("pause_s", 0))

    step(0, "planning")
    terms = sorted({w for w in re.findall(r"[a-z]{4,}", question.lower())})
    done(0, f"looking for {', '.join(terms)}")
    time.sleep(pause)

    step(1, f"fetching {len(job['sources'])} sources")
    documents = []
    for source in job["sources"]:
        try:
            documents.append(fetch(source))
        except (OSError, ValueError) as e:
            emit(type="log", level="warn", message=f"skipped a source: {e}")
    done(1, f"{len(documents)} documents")
    time.sleep(pause)

    step(2, "reading")
    findings = []
    for title, text in documents:
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            hits = sum(term in sentence.lower() for term in terms)
            if hits:
                findings.append((hits, title, sentence.strip()))
    findings.sort(key=lambda f: -f[0])
    emit(type="output", output={"question": question, "draft": [f[2] for f in findings[:5]]})
    done(2, f"{len(findings)} relevant sentences")
    time.sleep(pause)

    step(3, "synthesizing")
    summary = None
    if job.get("model_url"):
        notes = findings[: int(job.get("max_notes", 20))]
        prompt = f"Answer: {question}\n\nFrom these notes:\n" + "\n".join(f"- {f[2]}" for f in notes)
        try:
            answer = post_json(
                job["model_url"],
                {
                    "model": job.get("model", "default"),
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": int(job.get("max_tokens", 512)),
                },
                os.environ.get("FERRY_AGENT_API_KEY"),
            )
            summary = answer["choices"][0]["message"]["content"]
        except urllib.error.HTTPError as e:
            body = e.read(4096).decode("utf-8", "replace")
            if e.code == 429 or e.code >= 500:
                print(f"the model endpoint answered {e.code}; asking for another attempt: {body}", file=sys.stderr)
                sys.exit(75)
            sys.exit(f"the model endpoint refused the request ({e.code}): {body}")
    if summary is None:
        summary = " ".join(f[2] for f in findings[:3]) or "The sources say nothing about it."
    done(3)
    time.sleep(pause)

    step(4, "writing the report")
    lines = [f"# {question}", "", "## Summary", "", summary, "", "## Findings", ""]
    for n, (hits, title, sentence) in enumerate(findings, 1):
        lines.append(f"{n}. {sentence} ({title}; {hits} of {len(terms)} terms)")
    lines += ["", "## Sources", ""] + [f"- {title}" for title, _ in documents]
    report = "\n".join(lines)
    emit(type="output", output={"question": question, "report": report, "findings": len(findings)})
    done(4, f"{len(report)} characters")


if __name__ == "__main__":
    main()
