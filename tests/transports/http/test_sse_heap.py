"""Streams' write buffers stay in the heap once streams are served (no page faults per write)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Joins of 1-3 MB freed at once, as every stream's write is (h11 frames a chunk with
# a copy); the page faults they cost, in a fresh process.
_WRITES = """
import resource, sys
if sys.argv[1] == "kept":
    from agent.transports.http.sse import keep_heap_for_streams
    keep_heap_for_streams()
chunk = b"x" * 100_000
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for n in range(50):
    made = b"".join([chunk] * (10 + n % 20))
    del made
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str, **environ: str) -> int:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", _WRITES, mode],
        capture_output=True,
        text=True,
        check=True,
        env=clean | environ,
    )
    return int(done.stdout)


@pytest.mark.slow
def test_freed_write_buffers_are_not_handed_back_and_faulted_in_again() -> None:
    default, kept = faults("default"), faults("kept")
    assert default > 5000  # glibc alone: each buffer's pages faulted in again
    assert kept < default / 4


@pytest.mark.slow
def test_thresholds_the_environment_gives_are_left_to_it() -> None:
    fixed = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    assert faults("kept", **fixed) > faults("kept") * 4
