"""A per-job handler for Ferry's handler tests (tests/tests/handlers.rs): what it does is
decided by its input's "do". It speaks the protocol of docs/HANDLERS.md with nothing but the
standard library: the input is one JSON line on stdin, events are JSON lines on stdout."""

import json
import os
import signal
import subprocess
import sys
import time


def emit(**event):
    print(json.dumps(event), flush=True)


def note_pids(directory, *pids):
    """Records the pids of this handler and what it started, for the test to check they end."""
    with open(os.path.join(directory, f"{os.environ['FERRY_JOB_ID']}.pids"), "w") as f:
        f.write(" ".join(str(p) for p in pids))


job = json.loads(sys.stdin.readline())
do = job["do"]

if do == "progress":
    emit(type="log", level="info", message="step 1: fetching")
    emit(type="percentage", percent=25, message="fetched")
    print("a plain line", flush=True)
    print("a warning on stderr", file=sys.stderr, flush=True)
    emit(type="token", text="Fer")
    emit(type="token", text="ry")
    emit(type="percentage", percent=100)
    emit(type="output", output={"draft": 1})
    emit(type="output", output={
        "report": job["topic"].upper(),
        "job_id": os.environ["FERRY_JOB_ID"],
        "attempt": int(os.environ["FERRY_ATTEMPT"]),
        "deadline": os.environ["FERRY_DEADLINE"],
        "work_dir_is_private": os.path.isdir(os.environ["FERRY_WORK_DIR"])
        and os.listdir(os.environ["FERRY_WORK_DIR"]) == []
        and os.path.basename(os.environ["FERRY_WORK_DIR"]).startswith(os.environ["FERRY_JOB_ID"]),
        "env": os.environ.get("SCRIPTED_ENV"),
    })
elif do == "big":
    emit(type="output", output={"report": "x" * job["bytes"]})
elif do == "retry-once":
    if os.environ["FERRY_ATTEMPT"] == "1":
        print("the search API is rate limiting us", file=sys.stderr, flush=True)
        sys.exit(75)
    emit(type="output", output={"attempt": int(os.environ["FERRY_ATTEMPT"])})
elif do == "fail":
    for i in range(30):
        print(f"traceback line {i}", file=sys.stderr)
    sys.stderr.flush()
    sys.exit(1)
elif do == "hang":
    # A handler that ignores SIGTERM, with a background child that would outlive it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(["sleep", "300"])
    note_pids(job["pid_dir"], os.getpid(), child.pid)
    emit(type="output", output={"partial": "half a report"})
    emit(type="percentage", percent=50)
    time.sleep(300)
else:
    sys.exit(f"unknown do {do!r}")
