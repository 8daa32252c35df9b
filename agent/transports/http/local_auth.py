"""Authorisation of requests that arrive over the local socket (see local.py).

Kept apart from the token check so the two never mix: a request over the
socket is judged by its peer's uid alone, a request over TCP by its token
alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quart import current_app

from agent.core import submitter
from agent.errors import ForbiddenError, NotFoundError
from agent.policy.allowlist import Caller
from agent.transports.http.api import Route
from agent.transports.http.auth import Principal
from agent.transports.http.local import EXTENSION, LocalAccess, peer_of


@dataclass(frozen=True)
class PeerPrincipal(Principal):
    """A socket peer: its uid, and whether it may cancel only the jobs it submitted."""

    uid: int = -1
    own_jobs_only: bool = False
    gid: int = -1

    @property
    def submitter(self) -> str | None:
        return submitter.of_uid(self.uid)

    @property
    def caller(self) -> Caller:
        # The group names only a submit asks for (group database lookups, as the scope check's).
        return Caller(
            "socket",
            groups=submitter.group_names(submitter.groups_of(self.uid, self.gid)),
            privileged=self.allows("admin"),
            submitter=self.submitter,
        )


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
        name=f"{peer.user} ({peer.label})",
        scopes=scopes,
        uid=peer.uid,
        own_jobs_only=own_only,
        gid=peer.gid,
    )
    if own_only and spec.endpoint == "cancel_job":
        job_id = str(req.view_args.get("job_id"))
        try:
            recorded = await access.submitter_of(job_id)
        except NotFoundError:
            recorded = None  # as for another's job: whether it exists is not theirs to know
        if recorded != principal.submitter:
            raise ForbiddenError(
                f"User {peer.user} may cancel only jobs they submitted; {job_id} is not theirs",
                field="job_id",
                reason="Not the job's submitter",
            )
    return principal
