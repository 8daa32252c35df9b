"""Runbooks: procedures as data over registered operations (README "Runbooks").

Between the handlers and the core: the runbook.run handler (agent.handlers.runbook)
uses the model, the loader, the substitution and the intake checks defined here.
"""

from agent.runbooks.checks import RUNBOOK_OPERATION, Allow, check_runbook, check_step
from agent.runbooks.loader import Installed, RunbookLibrary, read_runbook_file
from agent.runbooks.model import SUPPORTED_SCHEMA_VERSIONS, Runbook, check_parameters, parse_runbook
from agent.runbooks.substitution import Scope, evaluate, resolve

__all__ = [
    "RUNBOOK_OPERATION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "Allow",
    "Installed",
    "Runbook",
    "RunbookLibrary",
    "Scope",
    "check_parameters",
    "check_runbook",
    "check_step",
    "evaluate",
    "parse_runbook",
    "read_runbook_file",
    "resolve",
]
