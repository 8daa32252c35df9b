"""hostagent: the per-host agent daemon.

Handler and transport authors need only the names re-exported here; every
other module is internal to the agent.
"""

from agent.context import JobContext
from agent.errors import AgentError, HandlerError
from agent.intake import Intake
from agent.jobs import JobDocument, JobState, JobStatus
from agent.registry import Handler, handler
from agent.transports import Transport

__version__ = "0.1.0"

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
