"""The audit trail of refused requests: who was turned away from which route, and why.

One warning line per refusal (400, 401, 403, 413, 429, 503) naming the
route, the client (its address, or the socket peer's uid), the token's
name when one was recognised (never the token) and the reason from the
error envelope, so `journalctl -u hostagent -p warning` shows them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import structlog
from quart import Response, g, request
from quart_trio import QuartTrio

from agent import metrics
from agent.transports.http.local import peer_of

log = structlog.get_logger("agent.http.audit")

AUDITED = frozenset({400, 401, 403, 413, 429, 503})


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


def _reason(body: bytes) -> tuple[str | None, str | None]:
    try:
        envelope = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(envelope, dict):
        return None, None
    details = envelope.get("details") if isinstance(envelope.get("details"), dict) else {}
    reason = details.get("reason") if details else None
    return str(envelope.get("error")), str(reason or envelope.get("message"))


def install(app: QuartTrio) -> None:
    """Log every refused request (after the error envelope is made)."""

    @app.after_request
    async def audit_refusal(response: Response) -> Response:
        if response.status_code not in AUDITED:
            return response
        code, reason = _reason(await response.get_data(as_text=False))
        principal = getattr(g, "principal", None)
        if request.endpoint in ("submit_job", "submit_batch"):
            metrics.record_rejected("http", code or str(response.status_code))
        log.warning(
            "http.refused",
            status=response.status_code,
            code=code,
            method=request.method,
            route=request.url_rule.rule if request.url_rule is not None else request.path,
            client=client_of(request.scope),
            token_name=getattr(principal, "name", None),
            reason=reason,
        )
        return response
