"""The hottest routes served below quart: the same Handlers, without the framework.

A submit or a status read through quart and hypercorn's ASGI layer spent
three to four times as long in the web stack (request and response objects,
routing, context locals, hooks, a task and a channel per request, three
socket writes per answer) as in the agent. The routes the table marks
`lean` are served instead straight from the HTTP/1.1 connection (lean_h11.py),
and answered here, in the order the quart app checks a request:

- a Content-Length over http.max_body_bytes: 413 before the body is read
  (as the ASGI front answers it);
- the whole body (413 past the limit, 408 after http.body_timeout_seconds);
- the token (routes.authorize: 401, 403), then the Handler; from its head
  to its answer (or its wait for a commit: routes.JobSlots) a request holds
  one of the http.max_active_requests slots that the ASGI front's job
  routes take too;
- every answer, refusals included, is an envelope.Answer, counted and
  audited by audit.record, as the quart app's hooks do.

Anything else (other routes, the local socket, HTTP/2, websockets) goes to
the ASGI front and quart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from agent.jobs import RESERVED_JOB_IDS
from agent.transports.http import audit
from agent.transports.http.envelope import Answer, failure_answer
from agent.transports.http.routes import ApiState, Call, Route, authorize

Found = tuple[Route, dict[str, str]]


class LeanRoutes:
    """The lean routes of a table, matched by method and path as quart's router would."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._exact: dict[tuple[str, str], Route] = {}
        # Rules whose one parameter is their last segment: (method, prefix) -> route.
        self._tail: dict[tuple[str, str], tuple[Route, str, bool]] = {}
        for spec in routes:
            if not spec.lean:
                continue
            prefix, bracket, rest = spec.rule.partition("<")
            if not bracket:
                self._exact[spec.method, spec.rule] = spec
                continue
            converter, _, name = rest.removesuffix(">").rpartition(":")
            if not prefix.endswith("/") or converter not in ("", "jobid") or "/" in rest:
                raise ValueError(f"{spec.rule}: the lean path cannot match this rule")
            self._tail[spec.method, prefix] = (spec, name, converter == "jobid")

    def match(self, method: str, path: str) -> Found | None:
        """The route and path parameters quart would find; None: leave it to quart."""
        spec = self._exact.get((method, path))
        if spec is not None:
            return spec, {}
        prefix, _, segment = path.rpartition("/")
        found = self._tail.get((method, prefix + "/"))
        if found is None or not segment:
            return None
        spec, name, job_id = found
        if job_id and segment in RESERVED_JOB_IDS:
            return None  # /jobs/batch is only the batch route (quart answers 405)
        return spec, {name: segment}


class Probes(Protocol):
    """Health and /metrics, answered from memory (fastpath.FastPaths)."""

    probe_paths: frozenset[str]

    async def probe(
        self, path: str, authorization: str | None, scope: Mapping[str, Any]
    ) -> Answer: ...


class LeanPath:
    """Runs lean routes with the API's state; its slots bound the job requests in
    hand (taken by the connection for the request: lean_h11.py). `probes`: health
    and /metrics GETs without a body are answered from the connection too (the
    fewer task switches a probe waits for, the sooner a busy agent answers it)."""

    def __init__(
        self, api: ApiState, routes: Sequence[Route], probes: Probes | None = None
    ) -> None:
        self.api = api
        self.routes = LeanRoutes(routes)
        self.probes = probes

    async def answer(
        self,
        found: Found,
        *,
        authorization: str | None,
        content_type: str,
        body: bytes,
        scope: Mapping[str, Any],
    ) -> Answer:
        """Authorise and run a request whose whole body arrived; count and audit it.

        `scope` is what the audit line reads the client from (an ASGI scope's `client`).
        """
        spec, params = found
        call = Call(self.api, None, params, {}, content_type, body)
        try:
            call.principal = authorize(spec, self.api, authorization)
            assert spec.handler is not None
            answer = await spec.handler(call)
        except Exception as exc:  # noqa: BLE001 (every failure is answered with the envelope)
            answer = failure_answer(
                exc,
                retry_after=self.api.config.retry_after_seconds,
                method=spec.method,
                path=scope["path"],
            )
        self.account(spec, answer, scope, call)
        return answer

    def refuse(self, found: Found, answer: Answer, scope: Mapping[str, Any]) -> Answer:
        """A refusal before the Handler ran (body too large or too slow), counted."""
        self.account(found[0], answer, scope, None)
        return answer

    @staticmethod
    def account(spec: Route, answer: Answer, scope: Mapping[str, Any], call: Call | None) -> None:
        audit.record(
            method=spec.method,
            rule=spec.rule,
            path=scope["path"],
            endpoint=spec.endpoint,
            status=answer.status,
            body=answer.body,
            scope=scope,
            principal=None if call is None else call.principal,
        )
