"""What one browser watching the VMs view costs the agent, with 200 VMs.

Starts the agent as `make run` does (HTTP on loopback without tokens, libvirt's
test driver), defines --vms domains through vm.define jobs (every other one
started), then measures the agent's CPU seconds and wake-ups over --seconds:
1. with no browser connected (per-VM usage is sampled only while watched, so
   this is the idle agent's figure plus the domains);
2. while one headless Chromium (Debian's, through chromedriver) shows /ui/vms,
   whose live stream samples every VM once a second.
It also reports the VMs view's first paint with every row (ms after navigation
start; the issue's target is <= 1 s).

Usage: python bench/ui_watch.py [--vms 200] [--seconds 30]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ would come first on sys.path and its http.py would shadow
# the standard library's `http` package (which urllib and selenium import).
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _BENCH]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Iterable  # noqa: E402

from tests.ui.browser import start_chromium  # noqa: E402

# bench/idle.py's measures of a process (CPU seconds, wake-ups).
_spec = importlib.util.spec_from_file_location("bench_idle", _BENCH / "idle.py")
assert _spec is not None
assert _spec.loader is not None
idle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(idle)

FIRST_PAINT_TARGET_MS = 1000


def start(root: Path) -> tuple[subprocess.Popen[str], str]:
    argv = [sys.executable, "-m", "agent", "run", "--state-dir", str(root / "state")]
    argv += ["--spool-dir", str(root / "spool"), "--libvirt-uri", "test:///default"]
    argv += ["--insecure-no-auth", "--http-bind", "127.0.0.1:0", "--log-format", "json"]
    agent = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert agent.stderr is not None
    for line in agent.stderr:
        if '"http.ready"' in line:
            url = json.loads(line)["url"]
            # Keep reading its log, or the pipe fills and the agent blocks.
            threading.Thread(target=_drain, args=(agent.stderr,), daemon=True).start()
            return agent, url
    raise SystemExit("the agent did not start")


def _drain(lines: Iterable[str]) -> None:
    for _ in lines:
        pass


def post(url: str, body: object) -> dict[str, object]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as answer:
        found: dict[str, object] = json.load(answer)["data"]
        return found


def job(operation: str, job_id: str, data: dict[str, object]) -> dict[str, object]:
    return {
        "version": "1.0",
        "job_id": job_id,
        "kind": "Bench",
        "operation": operation,
        "payload": {"type": f"{operation}.v1", "data": data},
    }


def wait_jobs(url: str, operation: str, count: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        query = f"{url}/api/v1/jobs?operation={operation}&status=Completed&limit=1"
        with urllib.request.urlopen(query) as answer:
            if json.load(answer)["data"]["total"] >= count:
                return
        time.sleep(0.2)
    raise SystemExit(f"{operation} jobs did not complete")


def define_vms(url: str, count: int) -> None:
    defines = [
        job(
            "vm.define", f"bench-define-{n}", {"spec": {"name": f"bench-{n:03d}", "memory_mib": 64}}
        )
        for n in range(count)
    ]
    post(f"{url}/api/v1/jobs/batch", {"jobs": defines})
    wait_jobs(url, "vm.define", count)
    starts = [
        job("vm.start", f"bench-start-{n}", {"name": f"bench-{n:03d}"}) for n in range(0, count, 2)
    ]
    post(f"{url}/api/v1/jobs/batch", {"jobs": starts})
    wait_jobs(url, "vm.start", len(starts))


def measure(pid: int, seconds: float) -> tuple[float, float]:
    cpu0, switches0 = idle.cpu_seconds(pid), idle.switches_by_thread(pid)
    time.sleep(seconds)
    cpu1, switches1 = idle.cpu_seconds(pid), idle.switches_by_thread(pid)
    return cpu1 - cpu0, idle.wakeups(switches0, switches1) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hostagent-ui-") as tmp:
        agent, url = start(Path(tmp))
        try:
            define_vms(url, args.vms)
            time.sleep(3)  # the jobs' aftermath settles
            idle_cpu, idle_woke = measure(agent.pid, args.seconds)
            driver = start_chromium()
            try:
                driver.get(f"{url}/ui/vms")
                deadline = time.monotonic() + 60
                painted = None
                while painted is None and time.monotonic() < deadline:
                    painted = driver.execute_script("return document.body.dataset.vmsPaintedMs")
                    time.sleep(0.05)
                rows = driver.execute_script(
                    "return document.querySelectorAll('#vms tbody tr').length"
                )
                time.sleep(2)  # the stream's first samples
                watched_cpu, watched_woke = measure(agent.pid, args.seconds)
                shown = driver.find_element("css selector", "#vm-count").text
            finally:
                driver.quit()
        finally:
            agent.terminate()
            agent.wait(timeout=60)
    load = os.getloadavg()[0]
    print(f"cpus={os.cpu_count()} load average {load:.2f} vms={args.vms} window={args.seconds:g} s")
    print(
        f"no browser: agent CPU {idle_cpu:.3f} s ({idle_cpu / args.seconds * 100:.2f}% of a core),"
        f" wake-ups {idle_woke:.1f}/s"
    )
    print(
        f"one browser on /ui/vms: agent CPU {watched_cpu:.3f} s "
        f"({watched_cpu / args.seconds * 100:.2f}% of a core), wake-ups {watched_woke:.1f}/s"
    )
    first = int(painted) if painted is not None else None
    met = first is not None and first <= FIRST_PAINT_TARGET_MS
    print(
        f"VMs view first paint with every row ({rows} rows, '{shown}'): {first} ms after "
        f"navigation start (target <= {FIRST_PAINT_TARGET_MS}) {idle.verdict(met)}"
    )
    assert re.match(r"\d+ of \d+", shown)


if __name__ == "__main__":
    main()
