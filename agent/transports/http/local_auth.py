"""Authorisation of requests that arrive over the local socket (see local.py).

Kept apart from the token check so the two never mix: a request over the
socket is judged by its peer's uid alone, a request over TCP by its token
alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quart import Response, current_app, g, request
from quart_trio import QuartTrio

from agent.errors import ForbiddenError
from agent.transports.http.api import Route
from agent.transports.http.auth import Principal
from agent.transports.http.local import EXTENSION, LocalAccess, peer_of, submitted_ids

_SUBMITS = ("submit_job", "submit_batch")


@dataclass(frozen=True)
class PeerPrincipal(Principal):
    """A socket peer: its uid, and whether it may cancel only the jobs it submitted."""

    uid: int = -1
    own_jobs_only: bool = False


def _access() -> LocalAccess:
    access = current_app.extensions.get(EXTENSION)
    assert isinstance(access, LocalAccess), "local socket served without LocalAccess"
    return access


async def authorize_local(spec: Route, req: Any) -> Principal | None:
    """The peer's principal for a request over the socket; None for TCP requests."""
    peer = peer_of(req.scope)
    if peer is None or spec.scope is None:
        return None
    access = _access()
    access.policy.check(peer, spec.scope)
    scopes, own_only = access.policy.scopes(peer)
    principal = PeerPrincipal(
        name=f"{peer.user} ({peer.label})", scopes=scopes, uid=peer.uid, own_jobs_only=own_only
    )
    if own_only and spec.endpoint == "cancel_job":
        job_id = str(req.view_args.get("job_id"))
        if await access.owners.owner(job_id) != peer.uid:
            raise ForbiddenError(
                f"User {peer.user} may cancel only jobs they submitted; {job_id} is not theirs",
                field="job_id",
                reason="Not the job's submitter",
            )
    return principal


def install(app: QuartTrio) -> None:
    """Remember who submitted each job over the socket (for their own cancels)."""

    @app.after_request
    async def record_owner(response: Response) -> Response:
        principal = getattr(g, "principal", None)
        if (
            isinstance(principal, PeerPrincipal)
            and principal.own_jobs_only
            and request.endpoint in _SUBMITS
            and response.status_code in (200, 201)
        ):
            job_ids = submitted_ids(request.endpoint or "", await response.get_data(as_text=False))
            if job_ids:
                await _access().owners.record(job_ids, principal.uid)
        return response
