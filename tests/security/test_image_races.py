"""Issue 20: racing the path under image jobs.

While 100 jobs run, threads swap what the job names: renameat2(RENAME_EXCHANGE)
of the input with a symlink to the secret, of the input's directory with a
symlink to the directory outside the roots, and of the output's directory
likewise. Every job either refuses (it met a link) or works on the file it
checked: no byte of the secret in any output, result, error or event, and
nothing outside the roots touched.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.config import Config
from agent.service.daemon import Agent
from agent.transports.spool.settings import SpoolConfig
from tests.jobs import submit, wait_done
from tests.security.hostile_images import MIB, files_holding, fingerprints, plant

RENAME_EXCHANGE = 2
AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a: Path | str, b: Path | str, dir_fd: int = AT_FDCWD) -> None:
    """renameat2(RENAME_EXCHANGE): both names swap what they point at, atomically."""
    if _libc.renameat2(dir_fd, os.fsencode(a), dir_fd, os.fsencode(b), RENAME_EXCHANGE):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a))


Pair = tuple[Path | str, Path | str, int]


@contextmanager
def swapping(pairs: list[Pair]) -> Iterator[list[int]]:
    """One thread per pair, exchanging the two names as fast as it can; yields the
    number of exchanges each made (so the test can show the race ran)."""
    stop = threading.Event()
    counts = [0] * len(pairs)

    def loop(index: int, a: Path | str, b: Path | str, dir_fd: int) -> None:
        while not stop.is_set():
            # The link stands in for a moment, then the real name is back, over and over:
            # most checks pass, and whatever opens the name again may meet the link.
            exchange(a, b, dir_fd)
            exchange(a, b, dir_fd)
            counts[index] += 2
            time.sleep(0.0002)

    threads = [
        threading.Thread(target=loop, args=(i, *pair), daemon=True) for i, pair in enumerate(pairs)
    ]
    for thread in threads:
        thread.start()
    try:
        yield counts
    finally:
        stop.set()
        for thread in threads:
            thread.join()


@pytest.fixture
def config(config: Config) -> Config:
    return config.model_copy(update={"spool": SpoolConfig(enabled=False), "max_concurrent_jobs": 4})


@pytest.mark.slow
async def test_swapping_links_under_100_jobs_reaches_nothing_outside(
    agent: Agent, tmp_path: Path
) -> None:
    planted = plant(tmp_path / "images", tmp_path / "outside")
    root, outside = planted.root, planted.outside
    (outside / "in.raw").write_bytes(planted.secret.read_bytes())  # what a swapped dir shows
    (outside / "victim.raw").write_bytes(b"\x11" * MIB)
    inputs = root / "in"
    inputs.mkdir()
    (inputs / "in.raw").write_bytes(b"\x5a" * MIB)
    (inputs / "decoy").symlink_to(planted.secret)
    (root / "in-decoy").symlink_to(outside)
    outputs = root / "out"
    outputs.mkdir()
    (root / "out-decoy").symlink_to(outside)
    outside_before = fingerprints(outside)

    disk = str(inputs / "in.raw")
    kinds = itertools.cycle(
        [
            ("image.convert", lambda n: {"path": disk, "output_path": f"{outputs}/c{n}.qcow2"}),
            (
                "image.convert",
                lambda n: {
                    "path": disk,
                    "output_path": f"{outputs}/r{n}.raw",
                    "output_format": "raw",
                    "source_format": "raw",
                },
            ),
            ("image.info", lambda n: {"path": disk, "backing_chain": True}),
            ("image.checksum", lambda n: {"path": disk}),
            ("image.check", lambda n: {"path": disk, "format": "raw"}),
        ]
    )
    seen: list[dict[str, Any]] = []
    # The input file's swap works in its directory (by descriptor), wherever that is named.
    inputs_fd = os.open(inputs, os.O_PATH | os.O_DIRECTORY)
    pairs: list[Pair] = [
        ("in.raw", "decoy", inputs_fd),  # the input file <-> a link to the secret
        (root / "in", root / "in-decoy", AT_FDCWD),  # its directory <-> a link to outside
        (root / "out", root / "out-decoy", AT_FDCWD),  # the output's directory <-> likewise
    ]
    with swapping(pairs) as counts:
        for batch in range(10):
            ids = []
            for n in range(batch * 10, batch * 10 + 10):
                operation, data = next(kinds)
                try:
                    ids.append(await submit(agent, operation, data(n)))
                except Exception as refused:
                    seen.append({"status": "Refused", "error": str(refused)})
            for job_id in ids:
                state = await wait_done(agent, job_id)
                result = await agent.intake.result(job_id) if state.status == "Completed" else None
                events = await agent.intake.logs(job_id)
                seen.append(
                    {"status": str(state.status), "result": result, "error": state.error,
                     "events": events}
                )  # fmt: skip
            await trio.sleep(0)
    # Put the names back (after an even or odd number of exchanges each).
    for a, b, dir_fd in pairs:
        if os.path.islink(os.path.join(f"/proc/self/fd/{dir_fd}", a) if dir_fd >= 0 else a):
            exchange(a, b, dir_fd)
    os.close(inputs_fd)

    assert len(seen) == 100
    assert min(counts) > 100, counts  # the races really ran
    statuses = {found["status"] for found in seen}
    assert statuses <= {"Completed", "Failed", "Refused"}
    assert "Completed" in statuses  # the checks do not refuse everything
    assert planted.marker not in json.dumps(seen, default=str).encode()
    assert files_holding(root, planted.marker) == []
    assert fingerprints(outside) == outside_before
    # Every output that exists is the input's bytes, converted: never the secret's.
    for path in (root / "out").glob("r*.raw"):
        assert path.read_bytes() == b"\x5a" * MIB
