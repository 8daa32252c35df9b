"""Where an idle agent's RSS comes from: import what the daemon imports, step by
step, in its order, and print what each step adds (RSS, anonymous, file-backed,
PSS) and how many modules it loaded.

One fresh interpreter, garbage collection off (as `hostagent run` starts); a
step's figure includes whatever it is the first to import (trio brings ssl,
attrs and inspect; structlog brings asyncio). bench/idle.py gives the running
agent's figure to set the total against.

Usage: python bench/rss_steps.py
"""

from __future__ import annotations

import gc
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

# bench/ on sys.path would shadow the standard library (bench/inspect.py).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def memory() -> dict[str, float]:
    """RSS, RssAnon, RssFile (from status) and Pss (smaps_rollup), MB."""
    figures = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "RssAnon:", "RssFile:")):
            figures[line.split(":")[0]] = int(line.split()[1]) / 1024
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            figures["Pss"] = int(line.split()[1]) / 1024
    return figures


def imports(*names: str) -> Callable[[], object]:
    return lambda: [importlib.import_module(name) for name in names]


def open_test_driver() -> object:
    libvirt = importlib.import_module("libvirt")
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open("test:///default")
    conn.getLibVersion()
    return conn


STEPS: list[tuple[str, Callable[[], object]]] = [
    ("trio (ssl, attrs, inspect)", imports("trio")),
    ("structlog (asyncio)", imports("structlog", "structlog.dev")),
    ("sqlite3, orjson", imports("sqlite3", "orjson")),
    ("libvirt (its library and 50-odd others)", imports("libvirt")),
    ("libvirt: open test:///default", open_test_driver),
    ("pydantic, pydantic_core", imports("pydantic", "pydantic.main")),
    ("agent.config, agent.jobs (first models)", imports("agent.config", "agent.jobs")),
    ("agent.service.settings (every section)", imports("agent.service.settings")),
    ("agent.core.metrics (prometheus_client)", imports("agent.core.metrics")),
    ("agent.service.daemon (core, store, handlers)", imports("agent.service.daemon")),
    ("agent.transports.spool.transport", imports("agent.transports.spool.transport")),
    (
        "agent.transports.http.transport (hypercorn, h11, h2, wsproto)",
        imports("agent.transports.http.transport"),
    ),
    ("yaml (a YAML runbook read)", imports("yaml")),
]


def main() -> None:
    gc.disable()
    before = memory()
    print(
        f"{'python itself':60s} {before['VmRSS']:6.1f} MB"
        f" (anonymous {before['RssAnon']:.1f}, file {before['RssFile']:.1f},"
        f" PSS {before['Pss']:.1f}), {len(sys.modules)} modules"
    )
    for name, step in STEPS:
        count = len(sys.modules)
        kept = step()  # noqa: F841 (a connection stays open, as in the agent)
        now = memory()
        print(
            f"{name:60s} +{now['VmRSS'] - before['VmRSS']:5.1f} MB"
            f" (anonymous +{now['RssAnon'] - before['RssAnon']:4.1f},"
            f" file +{now['RssFile'] - before['RssFile']:4.1f},"
            f" PSS +{now['Pss'] - before['Pss']:4.1f}), +{len(sys.modules) - count} modules,"
            f" total {now['VmRSS']:.1f}"
        )
        before = now


if __name__ == "__main__":
    main()
