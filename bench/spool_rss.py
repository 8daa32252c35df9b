"""RSS of the agent as jobs stream through the spool: flat, or growing per job?

Starts an agent (spool only), then drops --rounds rounds of --per-round
no-op jobs, waiting for each round to complete, and samples the agent's RSS
after each. The first round warms caches and pools; the growth is fitted
over the later rounds, in bytes per job.

Usage: python bench/spool_rss.py [--rounds 5] [--per-round 20000]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_BYTES_PER_JOB = 20.0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hostagent-rss-") as tmp:
        root = Path(tmp)
        spool, state = root / "spool", root / "state"
        argv = [sys.executable, "-m", "agent", "run", "--spool-dir", str(spool), "--state-dir"]
        argv += [str(state), "--libvirt-uri", "test:///default", "--no-http"]
        argv += ["--log-level", "warning"]
        agent = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
        try:
            while not (state / "jobs.sqlite3").exists() or not (spool / "incoming").exists():
                time.sleep(0.05)
            time.sleep(1)
            db = sqlite3.connect(f"file:{state / 'jobs.sqlite3'}?mode=ro", uri=True)
            samples = []
            for number in range(args.rounds):
                for n in range(args.per_round):
                    job_id = f"rss-{number}-{n}"
                    document = {
                        "version": "1.0",
                        "job_id": job_id,
                        "kind": "Bench",
                        "operation": "system.echo",
                        "payload": {"type": "system.echo.v1", "data": {}},
                    }
                    staged = spool / "tmp" / f"{job_id}.json"
                    staged.write_bytes(json.dumps(document).encode())
                    staged.rename(spool / "incoming" / staged.name)
                want = (number + 1) * args.per_round
                while (
                    db.execute("SELECT count(*) FROM jobs WHERE completed_at").fetchone()[0] < want
                ):
                    time.sleep(0.1)
                time.sleep(1)  # the outbox delivered, the loop idle again
                samples.append(rss_bytes(agent.pid))
                print(f"after {want} jobs: RSS {samples[-1] / 2**20:.1f} MB", flush=True)
        finally:
            agent.terminate()
            agent.wait(timeout=60)
    later = samples[1:]
    jobs = args.per_round * (len(later) - 1)
    growth = (later[-1] - later[0]) / jobs if jobs else 0.0
    verdict = "MET" if growth <= TARGET_BYTES_PER_JOB else "MISSED"
    print(
        f"RSS growth through the spool: {growth:.1f} bytes/job over the last {jobs} jobs "
        f"(target flat, <= {TARGET_BYTES_PER_JOB:g}) {verdict}"
    )


if __name__ == "__main__":
    main()
