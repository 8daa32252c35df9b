"""hostagent: the per-host agent daemon.

Handler and transport authors need only the names re-exported here; every
other module is internal to the agent.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.core.context import JobContext
    from agent.core.intake import Intake
    from agent.core.registry import Handler, handler
    from agent.errors import AgentError, HandlerError
    from agent.jobs import JobDocument, JobState, JobStatus
    from agent.transports import Transport

__version__ = "0.1.0"

# Imported on first use: `import agent.jobs` (the CLI, a handler module) must
# not pull in the intake, the dispatcher and trio with it (start time, RSS).
_LAZY = {
    "AgentError": "agent.errors",
    "Handler": "agent.core.registry",
    "HandlerError": "agent.errors",
    "Intake": "agent.core.intake",
    "JobContext": "agent.core.context",
    "JobDocument": "agent.jobs",
    "JobState": "agent.jobs",
    "JobStatus": "agent.jobs",
    "Transport": "agent.transports",
    "handler": "agent.core.registry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AgentError",
    "Handler",
    "HandlerError",
    "Intake",
    "JobContext",
    "JobDocument",
    "JobState",
    "JobStatus",
    "Transport",
    "__version__",
    "handler",
]
