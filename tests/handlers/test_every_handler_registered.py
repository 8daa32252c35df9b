"""Every operation a handler module declares is in the agent's registry: a handler written
but left out of its module's HANDLERS (or a module left out of the daemon) would be
unreachable from every transport, and no other test would notice."""

from __future__ import annotations

import importlib
import pkgutil

import agent.handlers
from agent.core.registry import Handler
from agent.handlers import guestkit
from agent.handlers._guestfs_host import libguestfs_problem
from agent.service.daemon import build_registry


def declared_operations() -> dict[str, str]:
    """Operation -> module, for every Handler object at module level in agent/handlers."""
    found: dict[str, str] = {}
    for module_info in pkgutil.iter_modules(agent.handlers.__path__):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"agent.handlers.{module_info.name}")
        for value in vars(module).values():
            if isinstance(value, Handler) and value.run.__module__ == module.__name__:
                found[value.operation] = module.__name__
    return found


def test_every_declared_operation_is_registered() -> None:
    declared = declared_operations()
    registered = set(build_registry().operations)
    # guestkit.* is offered only where libguestfs can work; the test machine has it.
    assert libguestfs_problem() is None, "make test installs libguestfs: guestkit must be offered"
    assert {"system.echo", "vm.start", "image.convert", "guestkit.inspect"} <= set(declared)
    missing = {op: module for op, module in declared.items() if op not in registered}
    assert missing == {}
    assert set(guestkit.HANDLERS) <= set(guestkit.available_handlers())


def test_the_registry_holds_nothing_a_module_does_not_declare() -> None:
    assert set(build_registry().operations) == set(declared_operations())
