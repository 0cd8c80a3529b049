"""A worker-mode handler for Ferry's handler tests (tests/tests/handlers.rs): one process
serves job after job, keeping state between them (a counter standing in for a loaded
model). It says ready once, then reads requests {"id", "input", "deadline"} as JSON lines
and answers with lines carrying the request's id."""

import json
import os
import signal
import subprocess
import sys
import time


def emit(job_id, **event):
    print(json.dumps({"id": job_id, **event}), flush=True)


time.sleep(0.2)  # "loading the model"
print(json.dumps({"type": "ready"}), flush=True)
served = 0
for line in sys.stdin:
    request = json.loads(line)
    job_id, job = request["id"], request["input"]
    served += 1
    do = job["do"]
    if do == "count":
        emit(job_id, type="percentage", percent=50, message="halfway")
        emit(job_id, type="log", level="info", message=f"job {served} on this worker")
        emit(job_id, type="output", output={"served": served, "pid": os.getpid(), "deadline": request["deadline"]})
        emit(job_id, type="done")
    elif do == "crash-once":
        marker = os.path.join(job["pid_dir"], "crashed")
        if not os.path.exists(marker):
            open(marker, "w").close()
            print("segfault in the vision model", file=sys.stderr, flush=True)
            os._exit(3)
        emit(job_id, type="output", output={"served": served, "pid": os.getpid()})
        emit(job_id, type="done")
    elif do == "exit-after":
        emit(job_id, type="output", output={"pid": os.getpid()})
        emit(job_id, type="done")
        sys.exit(0)  # gone while idle: the next job must not be sent to it
    elif do == "refuse":
        emit(job_id, type="failed", retryable=False, message="the image is not a chart")
    elif do == "hang":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen(["sleep", "300"])
        with open(os.path.join(job["pid_dir"], f"{job_id}.pids"), "w") as f:
            f.write(f"{os.getpid()} {child.pid}")
        emit(job_id, type="output", output={"partial": "some pages"})
        time.sleep(300)
