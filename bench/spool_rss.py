"""RSS of the agent as jobs stream through the spool: flat, or growing per job?

Starts an agent (spool only), then drops --rounds rounds of --per-round
no-op jobs, waiting for each round to complete, and samples the agent's RSS
after each. The first round warms caches and pools; the growth is fitted
over the later rounds, in bytes per job.

With --held, after each round the agent reports (SIGUSR1) Python's allocated
blocks, its live objects by type, SQLite's heap, glibc's arenas (taken from the
system / free in them) and Python's 1 MiB arenas; their growth since the second
round is printed per job, to find what grows.

Usage: python bench/spool_rss.py [--rounds 5] [--per-round 20000] [--held]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_BYTES_PER_JOB = 20.0

# Runs the agent with a SIGUSR1 hook that writes what it holds to $SNAPSHOT:
# Python's allocated blocks, live objects by type, and SQLite's own heap.
TRACED = """
import collections, ctypes, gc, json, os, re, runpy, signal, sys, tempfile

sqlite = ctypes.CDLL("libsqlite3.so.0")
sqlite.sqlite3_memory_used.restype = ctypes.c_int64

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]

def arenas():
    # glibc's arenas (main and per-thread): bytes taken from the system, and free in them.
    with tempfile.NamedTemporaryFile("r") as out:
        stream = libc.fopen(out.name.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        text = out.read()
    heaps = re.findall(r'<heap nr="\\d+">.*?</heap>', text, re.S)
    free = r'<total type="(?:fast|rest)" count="\\d+" size="(\\d+)"'
    return [
        [int(re.search(r'<system type="current" size="(\\d+)"', heap)[1]),
         sum(int(n) for n in re.findall(free, heap))]
        for heap in heaps
    ]

def pymalloc_arenas():
    # Python's own allocator: its 1 MiB arenas now (sys._debugmallocstats writes to fd 2).
    with tempfile.TemporaryFile("w+") as out:
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read()
    return int(re.search(r"# arenas allocated current\\s*=\\s*(\\d+)", text)[1])

def dump(signum, frame):
    before = sys.getallocatedblocks()
    collected = gc.collect()
    types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    held = {
        "blocks": sys.getallocatedblocks(),
        "garbage_blocks": before - sys.getallocatedblocks(),
        "collected": collected,
        "sqlite_bytes": sqlite.sqlite3_memory_used(),
        "malloc_used": libc.mallinfo2().uordblks + libc.mallinfo2().hblkhd,
        "malloc_free": libc.mallinfo2().fordblks,
        "malloc_mmapped": libc.mallinfo2().hblkhd,
        "arenas": arenas(),
        "pymalloc_arenas": pymalloc_arenas(),
        "types": dict(types),
    }
    with open(os.environ["SNAPSHOT"] + ".tmp", "w") as out:
        json.dump(held, out)
    os.rename(os.environ["SNAPSHOT"] + ".tmp", os.environ["SNAPSHOT"])

signal.signal(signal.SIGUSR1, dump)
sys.argv[0] = "agent"
runpy.run_module("agent", run_name="__main__", alter_sys=True)
"""


def snapshot(agent: subprocess.Popen[bytes], path: Path) -> dict[str, Any]:
    path.unlink(missing_ok=True)
    agent.send_signal(signal.SIGUSR1)
    while not path.exists():
        time.sleep(0.1)
    held: dict[str, Any] = json.loads(path.read_text())
    return held


def show_growth(base: dict[str, Any], now: dict[str, Any], jobs: int) -> None:
    blocks = (now["blocks"] - base["blocks"]) / jobs
    sqlite = (now["sqlite_bytes"] - base["sqlite_bytes"]) / jobs
    print(f"  since round 2: Python blocks {blocks:+.2f}/job, SQLite heap {sqlite:+.1f} B/job")
    print(f"  cyclic garbage found: {now['collected']} objects, {now['garbage_blocks']} blocks")
    used = (now["malloc_used"] - base["malloc_used"]) / jobs
    free = (now["malloc_free"] - base["malloc_free"]) / jobs
    print(f"  malloc: in use {used:+.1f} B/job, free but kept {free:+.1f} B/job")
    print(
        f"  pymalloc arenas {now['pymalloc_arenas']} (round 2: {base['pymalloc_arenas']}); "
        f"malloc mmapped {now['malloc_mmapped'] / 2**20:.1f} MB; glibc arenas (MB system/free): "
        + ", ".join(f"{size / 2**20:.1f}/{free / 2**20:.1f}" for size, free in now["arenas"])
    )
    grown = {
        name: count - base["types"].get(name, 0)
        for name, count in now["types"].items()
        if count - base["types"].get(name, 0) > jobs // 100
    }
    for name, more in sorted(grown.items(), key=lambda item: -item[1])[:8]:
        print(f"  {more / jobs:+.3f} {name}/job")


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=20000)
    parser.add_argument("--held", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hostagent-rss-") as tmp:
        root = Path(tmp)
        spool, state = root / "spool", root / "state"
        start = ["-c", TRACED] if args.held else ["-m", "agent"]
        argv = [sys.executable, *start, "run", "--spool-dir", str(spool), "--state-dir"]
        argv += [str(state), "--libvirt-uri", "test:///default", "--no-http"]
        argv += ["--log-level", "warning"]
        env = {**os.environ, "SNAPSHOT": str(root / "snapshot")}
        agent = subprocess.Popen(argv, stderr=subprocess.DEVNULL, env=env)
        snapshots: list[dict[str, Any]] = []
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
                time.sleep(2)  # the outbox delivered, the agent at rest again
                samples.append(rss_bytes(agent.pid))
                parts = ", ".join(
                    f"{field[3:]} {rss_bytes(agent.pid, field) / 2**20:.1f}"
                    for field in ("RssAnon", "RssFile", "RssShmem")
                )
                print(f"after {want} jobs: RSS {samples[-1] / 2**20:.1f} MB ({parts})", flush=True)
                if args.held:
                    snapshots.append(snapshot(agent, root / "snapshot"))
                    if len(snapshots) > 2:
                        show_growth(snapshots[1], snapshots[-1], want - 2 * args.per_round)
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
