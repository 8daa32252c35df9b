"""Request metrics and the audit trail of refused requests, for both serving paths.

Every answered request is counted by route template and status, and each
refusal (400, 401, 403, 413, 429, 503; 404 for a submit) gets one warning line naming the
route, the client (its address, or the socket peer's uid), the token's
name when one was recognised (never the token), the reason from the
error envelope, and the refused field with the value the request gave it
(`field=payload.data.path value=/etc/shadow`; a secret's value redacted), so
`journalctl -u hostagent -p warning` shows them.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

import structlog
from prometheus_client import Counter as CounterChild  # labels() gives one of its own

from agent.core import metrics
from agent.core.targets import refused_value
from agent.transports.http.auth import Principal
from agent.transports.http.local import peer_of

log = structlog.get_logger("agent.http.audit")

AUDITED = frozenset({400, 401, 403, 404, 413, 429, 503})
# 404 is a refusal only for a submit (a file the payload names is missing); a read of
# a job that is not there is an answer.
_SUBMITS = ("submit_job", "submit_batch")
_CONVERTER = re.compile(r"<[a-z]+:")  # <jobid:job_id> is counted as <job_id>, as documented


def client_of(scope: Mapping[str, Any]) -> str:
    """The address of a TCP client, or `uid:N` of a local socket peer."""
    peer = peer_of(scope)
    if peer is not None:
        return peer.label
    client = scope.get("client")
    if not client:
        return "unknown"
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _envelope(body: bytes) -> dict[str, Any]:
    try:
        envelope = json.loads(body)
    except ValueError:
        return {}
    return envelope if isinstance(envelope, dict) else {}


def _reason(envelope: dict[str, Any]) -> tuple[str | None, str | None]:
    if not envelope:
        return None, None
    details = envelope.get("details") if isinstance(envelope.get("details"), dict) else {}
    reason = details.get("reason") if details else None
    return str(envelope.get("error")), str(reason or envelope.get("message"))


@functools.lru_cache(maxsize=1024)
def _request_counter(method: str, rule: str | None, status: int) -> CounterChild:
    """The request counter of a route and status (looked up once: a regex and the
    registry's lock and dict per request otherwise)."""
    template = "<unmatched>" if rule is None else _CONVERTER.sub("<", rule)
    return metrics.HTTP_REQUESTS.labels(method, template, str(status))


def record(
    *,
    method: str,
    rule: str | None,
    path: str,
    endpoint: str | None,
    status: int,
    body: bytes,
    scope: Mapping[str, Any],
    principal: Principal | None,
    request_body: bytes = b"",
) -> None:
    """Count an answered request by its route template; audit it if it was refused.

    `rule` is the matched route's rule (None: no route matched), `endpoint` its name;
    `request_body` is read only for a refusal that names a field.
    """
    _request_counter(method, rule, status).inc()
    if status not in AUDITED or (status == 404 and endpoint not in _SUBMITS):
        return
    envelope = _envelope(body)
    code, reason = _reason(envelope)
    details = envelope.get("details")
    field = details.get("field") if isinstance(details, dict) else None
    field = field if isinstance(field, str) else None
    if endpoint in _SUBMITS:
        metrics.record_rejected("http", code or str(status))
    log.warning(
        "http.refused",
        status=status,
        code=code,
        method=method,
        route=path if rule is None else rule,
        client=client_of(scope),
        token_name=getattr(principal, "name", None),
        reason=reason,
        field=field,
        value=None if field is None else refused_value(field, request_body),
    )
