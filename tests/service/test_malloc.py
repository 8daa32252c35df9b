"""The daemon fixes glibc's mmap threshold, so big transient buffers never start
coming from the heap (where they fragmented it: bench/spool_rss.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Frees a 300 KB buffer (mmapped: over the 128 KiB threshold), then takes another:
# with the dynamic threshold glibc raised it on that free, and the second comes from
# the heap. Prints how many mmapped chunks glibc holds while the second lives.
_PROBE = """
import ctypes

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

def probe(argv=None):
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    before = libc.mallinfo2().hblks
    first = bytearray(300_000)
    del first
    second = bytearray(300_000)
    print(libc.mallinfo2().hblks - before)
    return 0
"""

_DAEMON = (
    _PROBE
    + """
import agent.cli.command
agent.cli.command._main = probe  # what `run` does once malloc is set up: the probe instead
agent.cli.command.main(["run"])
"""
)

_CLIENT = _DAEMON.replace('main(["run"])', 'main(["status"])')


def _mmapped_chunks(code: str, **env: str) -> int:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**environ, **env},
    )
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_hostagent_run_keeps_big_buffers_out_of_the_heap() -> None:
    assert _mmapped_chunks(_DAEMON) == 1
    # Other commands (short-lived) keep glibc's defaults: the threshold moved.
    assert _mmapped_chunks(_CLIENT) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_environment_wins_over_the_daemon_settings() -> None:
    # An operator's MALLOC_MMAP_THRESHOLD_ (glibc reads it) is left as given.
    assert _mmapped_chunks(_DAEMON, MALLOC_MMAP_THRESHOLD_=str(1 << 20)) == 0
