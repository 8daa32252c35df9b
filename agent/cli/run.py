"""`hostagent run`: the daemon process's own set-up (malloc, logging), then serve.

malloc: with glibc's defaults the agent's RSS grew ~90 bytes per spool job for
ever (bench/spool_rss.py --held): Python's live blocks and SQLite's heap stayed
flat, but the memory malloc kept free grew, mostly in the per-thread arenas of
the store's and trio's worker threads. glibc raises its mmap threshold each time
a big mmapped buffer is freed (up to 32 MiB; the spool's 256 KiB inotify reads,
set and dict resizes during a burst); from then on such buffers come from the
arenas, and the holes they leave among long-lived blocks are not given back.
A fixed threshold (which turns the dynamic one off) keeps big transient buffers
in mmaps that go back to the kernel when freed, and two arenas instead of 8 per
core keep the worker threads' free memory in fewer places.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from agent.core.heap import M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, set_heap
from agent.errors import AgentError

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.config import Config


# glibc's own starting values, kept fixed; the arena count fits a host's few cores
# (the GIL lets one Python thread run at a time; SQLite works without it).
SETTINGS = {M_MMAP_THRESHOLD: 128 * 1024, M_TRIM_THRESHOLD: 128 * 1024, M_ARENA_MAX: 2}


def tune_malloc(environ: Mapping[str, str] = os.environ) -> list[str]:
    """Apply SETTINGS before any thread starts; answers the names applied."""
    return set_heap(SETTINGS, environ)


def run(config: Config, *, reload: Callable[[], Config]) -> int:
    """Serve until SIGTERM; SIGHUP applies `reload()`."""
    import faulthandler
    from functools import partial

    import trio

    from agent.service.daemon import serve
    from agent.service.logs import configure_logging

    configure_logging(config.log_format, config.log_level, worker_id=config.worker_id)
    # When the systemd watchdog gives up it sends SIGABRT: the journal then shows
    # where every thread was stuck.
    faulthandler.enable()
    try:
        trio.run(partial(serve, config, load_config=reload))
    except BaseExceptionGroup as group:
        # A task's AgentError (e.g. a transport refusing its config) arrives wrapped
        # by the nurseries; report it like any other.
        found, rest = group.split(AgentError)
        if found is None or rest is not None:
            raise
        raise _first_leaf(found) from group
    return 0


def _first_leaf(group: BaseExceptionGroup[AgentError]) -> AgentError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
