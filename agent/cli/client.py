"""The CLI's HTTP client for a running agent's /api/v1 (httpx, synchronous).

Errors come back as the agent's own error classes (by contract code), so
the CLI reports a remote VALIDATION_ERROR exactly like a local one.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import httpx

from agent.errors import (
    AgentError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    QueueFullError,
    UnauthorizedError,
    UnreachableError,
    ValidationError,
)
from agent.jobs import JobStatus

_BY_CODE: dict[str, type[AgentError]] = {
    cls.code: cls
    for cls in (
        ValidationError,
        BadRequestError,
        UnauthorizedError,
        ForbiddenError,
        NotFoundError,
        ConflictError,
        PayloadTooLargeError,
        QueueFullError,
    )
}


class AgentClient:
    """One agent's API: each method answers the `data` of the success envelope."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        verify: str | bool = True,
        cert: tuple[str, str] | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            verify=verify,
            cert=cert,
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any endpoint (the resource view's nouns): the `data` of its answer."""
        return self._call(method, path, **kwargs)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise UnreachableError(f"cannot reach the agent at {self.url}: {exc}") from exc
        return _data(response)

    def submit(self, document: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("POST", "/api/v1/jobs", json=document)
        return answer

    def submit_batch(self, documents: list[dict[str, Any]]) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("POST", "/api/v1/jobs/batch", json={"jobs": documents})
        return answer

    def status(self, job_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("GET", f"/api/v1/jobs/{job_id}")
        return answer

    def jobs(self, **filters: Any) -> dict[str, Any]:
        params = {key: value for key, value in filters.items() if value is not None}
        answer: dict[str, Any] = self._call("GET", "/api/v1/jobs", params=params)
        return answer

    def result(self, job_id: str) -> Any:
        return self._call("GET", f"/api/v1/jobs/{job_id}/result")

    def logs(self, job_id: str) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self._call("GET", f"/api/v1/jobs/{job_id}/logs")["logs"]
        return answer

    def cancel(self, job_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("POST", f"/api/v1/jobs/{job_id}/cancel")
        return answer

    def capabilities(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("GET", "/api/v1/capabilities")
        return answer

    def health(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("GET", "/api/v1/health")
        return answer

    @contextmanager
    def events(self, job_id: str) -> Iterator[Iterator[dict[str, Any] | None]]:
        """The job's live events (SSE); None for each keepalive, so callers can check a clock."""
        try:
            with self._http.stream(
                "GET",
                "/api/v1/events",
                params={"job_id": job_id},
                timeout=httpx.Timeout(30.0, read=60.0),
            ) as response:
                if response.is_error:
                    response.read()
                    _data(response)
                yield _sse_messages(response)
        except httpx.TransportError as exc:
            raise UnreachableError(f"event stream from {self.url} failed: {exc}") from exc

    def follow(
        self, job_id: str, *, deadline: float, view: ProgressView | None = None
    ) -> dict[str, Any]:
        """Watch a job until it is terminal (or the monotonic deadline); answers its status."""
        while True:
            with self.events(job_id) as messages:
                for message in messages:
                    if time.monotonic() > deadline:
                        raise AgentError(f"Job {job_id} did not finish in time", field="timeout")
                    if message is None:
                        continue
                    if view is not None:
                        view.show(message)
                    if message["type"] in ("initial_status", "status"):
                        state: dict[str, Any] = message["data"]
                        if JobStatus(state["status"]).terminal:
                            return state
            # The stream ended early (agent restart, or this client fell behind): reopen;
            # initial_status brings the job's state up to date.


def _data(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError as exc:
        raise AgentError(
            f"unexpected answer from the agent: HTTP {response.status_code}",
            details={"body": response.text[:200]},
        ) from exc
    if response.is_success and isinstance(body, dict) and body.get("success") is True:
        return body.get("data")
    if not isinstance(body, dict):
        body = {}
    cls = _BY_CODE.get(str(body.get("error")), AgentError)
    details = body.get("details") if isinstance(body.get("details"), dict) else {}
    raise cls(str(body.get("message") or f"HTTP {response.status_code}"), details=details)


def _sse_messages(response: httpx.Response) -> Iterator[dict[str, Any] | None]:
    data: list[str] = []
    for line in response.iter_lines():
        if line.startswith(":"):
            yield None
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif not line and data:
            yield json.loads("\n".join(data))
            data = []


class ProgressView:
    """Progress bar and log lines of a followed job (on a terminal; plain lines otherwise)."""

    def __init__(self, out: TextIO | None = None, *, width: int = 30) -> None:
        self.out = out or sys.stderr
        self.width = width
        self.tty = self.out.isatty()
        self._bar = ""
        self._status: str | None = None

    def show(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        data = message.get("data") or {}
        if kind == "progress":
            percent = data.get("percent")
            self._draw(percent, data.get("message"))
        elif kind == "log":
            self._line(f"[{data.get('level', 'info')}] {data.get('message', '')}")
        elif kind in ("initial_status", "status") and data.get("status") != self._status:
            self._status = data.get("status")
            self._line(f"{data.get('job_id', message.get('job_id'))}: {self._status}")
        elif kind == "error":
            self._line(f"error: {data.get('message')}")

    def _draw(self, percent: float | None, text: str | None) -> None:
        if percent is None:
            bar = f"[{'?' * self.width}]  ...  {text or ''}"
        else:
            filled = int(self.width * min(max(percent, 0.0), 100.0) / 100)
            bar = f"[{'#' * filled}{'-' * (self.width - filled)}] {percent:5.1f}%  {text or ''}"
        if self.tty:
            self._bar = bar.rstrip()
            self.out.write("\r\033[K" + self._bar)
        else:
            self.out.write(bar.rstrip() + "\n")
        self.out.flush()

    def _line(self, text: str) -> None:
        if self.tty:
            self.out.write("\r\033[K" + text + "\n" + self._bar)
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def finish(self) -> None:
        if self.tty and self._bar:
            self.out.write("\n")
            self.out.flush()
