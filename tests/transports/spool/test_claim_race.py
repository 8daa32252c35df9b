"""A dropper that swaps its file for links while the agent claims it (finding 4 of
the hardening issue): the agent moves an entry into .claimed/ before it opens and
checks it there, so whatever is swapped in afterwards is never what was accepted."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import trio

from agent.config import Config
from agent.service.daemon import Agent
from tests.jobs import job

SECRET = b"root:$6$do-not-leak$"


def swap_forever(spool: Path, secret: Path, stop: threading.Event, counts: dict[str, int]) -> None:
    """Drop job files and, right behind each, swap the name for a symlink or a hard link."""
    incoming, tmp = spool / "incoming", spool / "tmp"
    n = 0
    while not stop.is_set():
        name = f"race-{n}.json"
        staged = tmp / name
        staged.write_text(json.dumps(job(f"race-{n}")))
        staged.rename(incoming / name)
        decoy = tmp / f".decoy-{n}"
        if n % 2:
            decoy.symlink_to(secret)
        else:
            os.link(secret, decoy)
        # Whatever is at the name now (the job file, or nothing: already claimed) is replaced.
        decoy.rename(incoming / name)
        counts["swapped"] += 1
        n += 1
        if n % 50 == 0:
            time.sleep(0.005)


@pytest.mark.slow
async def test_swapping_files_for_links_never_lands_a_link_or_a_foreign_file(
    agent: Agent, config: Config, tmp_path: Path
) -> None:
    spool = config.spool_dir
    secret = spool.parent / "secret"  # same filesystem as the spool, so hard links work
    secret.write_bytes(SECRET)
    secret_inode = secret.stat().st_ino
    stop, counts = threading.Event(), {"swapped": 0}
    dropper = threading.Thread(target=swap_forever, args=(spool, secret, stop, counts))
    dropper.start()
    try:
        await trio.sleep(4)  # the race runs for several seconds
    finally:
        stop.set()
        dropper.join()
    with trio.fail_after(60):  # let the agent take what is left
        while os.listdir(spool / "incoming") or os.listdir(spool / ".claimed"):
            await trio.sleep(0.05)
    assert counts["swapped"] > 200
    for folder in ("active", "done", "failed", ".claimed"):
        for path in (spool / folder).iterdir():
            assert not path.is_symlink(), path
            info = path.lstat()
            assert info.st_ino != secret_inode, path
            assert info.st_nlink == 1, path
            assert SECRET not in path.read_bytes(), path
    assert secret.stat().st_nlink == 1  # every hard link the dropper made was removed
    assert secret.read_bytes() == SECRET
