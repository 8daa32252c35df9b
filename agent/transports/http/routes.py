"""The route table's building blocks, shared by the quart app and the ASGI front.

Every route is declared once, as a `Route`, with its scope and models; the
quart app registers it, the OpenAPI document is generated from it, and the
routes marked `hot` are also served in front of quart (front.py). A route's code
is either a quart view (streams, docs, the resource view) or a `Handler`: a
coroutine from a `Call` to an `Answer` that knows no web framework, so both
paths run the very same code, authorisation and body rules included.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from pydantic import BaseModel

from agent.core.intake import IntakeDoor, TransportIntake
from agent.core.services import Services
from agent.errors import BadRequestError, DrainingError, UnsupportedMediaTypeError
from agent.jobs import parse_json
from agent.transports.http.auth import Principal, TokenTable, bearer_token
from agent.transports.http.envelope import Answer
from agent.transports.http.probes import HealthReports
from agent.transports.http.settings import HttpConfig, Scope

if TYPE_CHECKING:
    from quart import Response  # quart views only: imported where the app is built

API = "/api/v1"
# Requests whose job waits for the store's commit, per slot: enough that a commit
# takes every waiting submit of a few dozen clients (one fsync for all of them).
COMMIT_WAITERS_PER_SLOT = 4


class Lease:
    """One of JobSlots' slots, held by a request until released (a second release
    does nothing)."""

    __slots__ = ("_slots", "held")

    def __init__(self, slots: JobSlots) -> None:
        self._slots = slots
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._slots.working.release()


_LEASE: ContextVar[Lease | None] = ContextVar("hostagent_job_slot", default=None)


class JobSlots:
    """The bound on job work in hand: `max_active_requests` requests at once are
    read, validated and answered, whichever path brought them (front.py, quart),
    so the loop always turns around between two health probes.

    A submit waiting for its commit does no work: it gives its slot back for the
    wait (`committing`), so the next requests are validated meanwhile and share
    that commit's fsync, and takes one again to answer (a commit wakes all its
    waiters at once: answering them all in one go kept probes waiting). The
    waits are bounded too (COMMIT_WAITERS_PER_SLOT per slot); past that a request
    keeps its slot while it waits for room.
    """

    def __init__(self, working: int) -> None:
        self.working = trio.Semaphore(working, max_value=working)  # a double release raises
        self.waiters = trio.Semaphore(working * COMMIT_WAITERS_PER_SLOT)

    async def take(self) -> Lease:
        """A slot for the calling task's request (and what it runs), once one is free."""
        await _acquire(self.working)
        lease = Lease(self)
        _LEASE.set(lease)
        return lease

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        lease = await self.take()
        try:
            yield
        finally:
            lease.release()

    def committing(self) -> Committing:
        """Around a wait for the store: the request's slot is given back for the
        wait and taken again after it. A request that holds none just waits."""
        return Committing(self)


class Committing:
    """JobSlots.committing's context (a class: a generator-based one cost a submit
    a few microseconds more, on the hottest path there is)."""

    __slots__ = ("_lease", "_slots")

    def __init__(self, slots: JobSlots) -> None:
        self._slots = slots
        self._lease: Lease | None = None

    async def __aenter__(self) -> None:
        lease = _LEASE.get()
        if lease is None or not lease.held:
            return
        await _acquire(self._slots.waiters)
        lease.release()
        self._lease = lease

    async def __aexit__(self, *exc_info: object) -> None:
        lease = self._lease
        if lease is None:
            return
        # Room for the next waiter before a slot is awaited: a request past the
        # bound holds a slot while it waits for that room.
        self._slots.waiters.release()
        await _acquire(self._slots.working)
        lease.held = True


async def _acquire(semaphore: trio.Semaphore) -> None:
    # Semaphore.acquire always yields to the scheduler, even when free: under load
    # each yield waits for every other runnable task. The request awaits its I/O soon
    # enough; only a wait for a slot needs to wait.
    try:
        semaphore.acquire_nowait()
    except trio.WouldBlock:
        await semaphore.acquire()


class ApiState:
    """What the routes need; the transport swaps `tokens` and `config` on reload.

    `services` is the agent's registry, for what the routes read beside jobs
    (the resource view); empty where there is no agent around the API.
    """

    def __init__(
        self,
        intake: TransportIntake,
        config: HttpConfig,
        tokens: TokenTable,
        services: Services | None = None,
    ) -> None:
        self.intake = intake
        self.config = config
        self.tokens = tokens
        self.services = services or Services()
        # max_active_requests takes a restart: the slots are made once.
        self.slots = JobSlots(config.max_active_requests)
        # Kept fresh by the transport's task (HealthReports.refresh); read by health.
        self.health = HealthReports(intake)


@dataclass(slots=True)
class Call:
    """One request as a Handler sees it, whichever path brought it."""

    api: ApiState
    principal: Principal | None
    params: Mapping[str, str] = field(default_factory=dict)  # the path's <name> parts
    args: Mapping[str, str] = field(default_factory=dict)  # the query (first of each)
    content_type: str = ""  # the Content-Type header as sent
    body: bytes = b""

    @property
    def privileged(self) -> bool:
        """The caller holds `admin` (the domain policy lets only such callers pass through)."""
        return self.principal is not None and self.principal.allows("admin")

    def json(self) -> Any:
        """The body as JSON, read the way every transport reads documents (json_body)."""
        # As werkzeug's `mimetype`: the part before any parameter, lower case.
        mimetype = self.content_type.partition(";")[0].strip(" \t").lower()
        if mimetype != "application/json":
            raise UnsupportedMediaTypeError(
                "The request body must be JSON",
                field="Content-Type",
                reason=f"expected application/json, got {mimetype or 'none'}",
            )
        return json_body(self.body, self.content_type)

    def require_accepting(self) -> None:
        require_accepting(self.api.intake)


def json_body(body: bytes, content_type: str) -> Any:
    """`body` as JSON (parse_json: depth, duplicates, NaN), decoded by the charset its
    Content-Type declares (none: JSON's own detection; unknown: 415); text no job can
    hold (a lone surrogate, which has no UTF-8) is a 400 naming where it is."""
    charset = _charset(content_type)
    try:
        value = parse_json(body if charset is None else body.decode(charset))
    except ValueError as exc:  # UnicodeDecodeError included
        raise BadRequestError(
            "The request body is not valid JSON", field="body", reason=str(exc)
        ) from exc
    # A surrogate comes from a \u escape, or from bytes ED A0-BF (read "surrogatepass").
    if charset is not None or b"\\u" in body or b"\xed" in body:
        _check_text(value, "body")
    return value


def _charset(content_type: str) -> str | None:
    """The codec of the Content-Type's charset parameter (None: not given)."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip(" \t").lower() == "charset":
            charset = value.strip(" \t\"'").lower()
            try:
                return codecs.lookup(charset).name
            except LookupError:
                raise UnsupportedMediaTypeError(
                    "The request body's charset is not known",
                    field="Content-Type",
                    reason=f"unknown charset {charset!r}",
                ) from None
    return None


def _check_text(value: Any, where: str) -> None:
    if isinstance(value, str):
        _encodable(value, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _encodable(key, where)
            _check_text(item, key if where == "body" else f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_text(item, str(index) if where == "body" else f"{where}.{index}")


def _encodable(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequestError(
            f"Text in {where} is not valid Unicode",
            field=where,
            reason=f"a lone surrogate ({exc.object[exc.start]!a}) has no UTF-8 encoding",
        ) from exc


def require_accepting(intake: IntakeDoor) -> None:
    """DrainingError (503) once the agent drains for shutdown."""
    if not intake.accepting:
        raise DrainingError


Handler = Callable[[Call], Awaitable[Answer]]


@dataclass(frozen=True)
class Route:
    method: str
    rule: str  # quart's rule syntax: /api/v1/jobs/<jobid:job_id>
    scope: Scope | None  # None: open to anyone
    summary: str
    view: Callable[..., Awaitable[Response]] | None = None  # a quart view ...
    handler: Handler | None = None  # ... or framework-neutral code (one of the two)
    status: int = 200
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    answer: type[BaseModel] | None = None  # the `data` of the success envelope
    errors: tuple[int, ...] = ()
    # Health may be opened by config (http.open_health) for probes.
    open_if_configured: bool = False
    # Browsers cannot set headers on EventSource/WebSocket: accept ?access_token=.
    token_in_query: bool = False
    websocket: bool = False
    raw: str | None = None  # a non-JSON answer's media type
    # Takes an Idempotency-Key header (the job_id) and answers Location: the job.
    idempotency_key: bool = False
    # Also served in front of quart (front.py): a Handler that reads no query string.
    hot: bool = False

    def __post_init__(self) -> None:
        if (self.view is None) == (self.handler is None):
            raise TypeError(f"{self.rule}: a route has a view or a handler, not both")
        if self.hot and (self.handler is None or self.query or self.token_in_query):
            raise TypeError(f"{self.rule}: a hot route is a Handler that reads no query")

    @property
    def endpoint(self) -> str:
        code = self.view if self.view is not None else self.handler
        return code.__name__  # type: ignore[union-attr]  # one of the two is set


def route(table: list[Route], method: str, rule: str, **spec: Any) -> Callable[[Handler], Handler]:
    """Declare `handler` as the code of METHOD RULE in `table`."""

    def register(handler: Handler) -> Handler:
        table.append(Route(method=method, rule=rule, handler=handler, **spec))
        return handler

    return register


def authorize(
    spec: Route,
    api: ApiState,
    authorization: str | None,
    access_token: Callable[[], str | None] = lambda: None,
) -> Principal | None:
    """The caller's principal for `spec` (None: open route); Unauthorized/ForbiddenError."""
    if spec.scope is None:
        return None
    if spec.open_if_configured and api.config.open_health:
        return None
    token = bearer_token(authorization)
    if token is None and spec.token_in_query:
        token = access_token()
    return api.tokens.authorize(token, spec.scope)
