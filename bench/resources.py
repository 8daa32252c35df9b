"""GET /api/v1/vms latency with 200 defined domains while job submissions keep flowing.

Starts a real agent process on libvirt's test:///default (tokens on, as
deployed), defines 200 domains through POST /api/v1/vms (each a vm.define
job), then for --seconds runs, at the same time:

- a submitter thread posting system.echo jobs back to back (POST /api/v1/jobs);
- the reader: GET /api/v1/vms back to back, each answer checked to hold every domain.

Prints p50/p90/p99/max of the reads (target: p99 <= 50 ms) and the submit rate and
p99 during the reads, against the submit rate alone: reads must not block submissions.

Usage: python bench/resources.py [--seconds 10] [--domains 200]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ would come first on sys.path and its http.py would shadow
# the standard library's `http` package (which httpx imports).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402

from agent.transports.http.auth import create_token  # noqa: E402

P99_TARGET_MS = 50.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def start_agent(work: Path, token_entry: dict[str, object]) -> tuple[subprocess.Popen[str], str]:
    env = {
        **os.environ,
        "HOSTAGENT_HTTP__TOKENS": json.dumps([token_entry]),
        "HOSTAGENT_HTTP__BIND": "127.0.0.1:0",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "run",
            "--log-format",
            "json",
            "--libvirt-uri",
            "test:///default",
            "--state-dir",
            str(work / "state"),
            "--spool-dir",
            str(work / "spool"),
            "--log-level",
            "info",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    url = None
    for line in process.stderr:
        event = json.loads(line)
        url = event.get("url", url) if event.get("event") == "http.ready" else url
        if event.get("event") == "agent.ready":
            break
    assert url is not None, "the agent did not start"
    # Keep draining its log so the pipe never fills and stalls the agent.
    threading.Thread(target=lambda: [None for _ in process.stderr or []], daemon=True).start()
    return process, url


def define_domains(http: httpx.Client, count: int) -> None:
    jobs = []
    for number in range(count):
        spec = {"name": f"bench-{number:03d}", "memory_mib": 64, "vcpus": 1}
        answer = http.post("/api/v1/vms", json={"spec": spec})
        assert answer.status_code == 202, answer.text
        jobs.append(answer.json()["data"]["job_id"])
    deadline = time.monotonic() + 120
    while http.get("/api/v1/vms").json()["data"]["total"] < count:
        assert time.monotonic() < deadline, "domains were not defined in time"
        time.sleep(0.2)


def submit_loop(url: str, headers: dict[str, str], stop: threading.Event) -> list[float]:
    latencies: list[float] = []
    document = {
        "version": "1.0",
        "kind": "VMOperation",
        "operation": "system.echo",
        "payload": {"type": "system.echo.v1", "data": {}},
    }
    with httpx.Client(base_url=url, headers=headers) as http:
        while not stop.is_set():
            began = time.perf_counter()
            answer = http.post("/api/v1/jobs", json=document)
            latencies.append(time.perf_counter() - began)
            assert answer.status_code == 201, answer.text
    return latencies


def submits_for(url: str, headers: dict[str, str], seconds: float) -> list[float]:
    stop = threading.Event()
    found: list[list[float]] = []
    worker = threading.Thread(target=lambda: found.append(submit_loop(url, headers, stop)))
    worker.start()
    time.sleep(seconds)
    stop.set()
    worker.join()
    return found[0]


def read_for(http: httpx.Client, seconds: float, domains: int) -> list[float]:
    """GET /api/v1/vms back to back for `seconds`; answers each latency."""
    reads: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        began = time.perf_counter()
        answer = http.get("/api/v1/vms")
        reads.append(time.perf_counter() - began)
        assert answer.json()["data"]["total"] >= domains
    return reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--domains", type=int, default=200)
    args = parser.parse_args()
    token, entry = create_token("bench", ["admin"])
    headers = {"Authorization": f"Bearer {token}"}
    with tempfile.TemporaryDirectory() as scratch:
        process, url = start_agent(Path(scratch), entry.model_dump())
        try:
            with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
                define_domains(http, args.domains)
                quiet = read_for(http, args.seconds / 2, args.domains)
                alone = submits_for(url, headers, args.seconds / 2)
                stop = threading.Event()
                submitted: list[list[float]] = []
                worker = threading.Thread(
                    target=lambda: submitted.append(submit_loop(url, headers, stop))
                )
                worker.start()
                reads = read_for(http, args.seconds, args.domains)
                stop.set()
                worker.join()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    during = submitted[0]
    ms = [value * 1000 for value in reads]
    report = {
        "domains": args.domains,
        "reads": len(reads),
        "read_ms": {
            "p50": round(percentile(ms, 0.50), 2),
            "p90": round(percentile(ms, 0.90), 2),
            "p99": round(percentile(ms, 0.99), 2),
            "max": round(max(ms), 2),
        },
        "read_ms_without_submits": {
            "p50": round(percentile(quiet, 0.50) * 1000, 2),
            "p99": round(percentile(quiet, 0.99) * 1000, 2),
        },
        "submits_per_second_alone": round(len(alone) / (args.seconds / 2), 1),
        "submits_per_second_during_reads": round(len(during) / args.seconds, 1),
        "submit_p99_ms_alone": round(percentile(alone, 0.99) * 1000, 2),
        "submit_p99_ms_during_reads": round(percentile(during, 0.99) * 1000, 2),
        "p99_target_ms": P99_TARGET_MS,
        # Other work on the machine shows in every figure: say how busy it was.
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
    }
    report["pass"] = report["read_ms"]["p99"] <= P99_TARGET_MS  # type: ignore[index]
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["pass"] else 1)


if __name__ == "__main__":
    main()
