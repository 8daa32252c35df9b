"""The browser UI at /ui: static files from this package (no build step, no CDN), noVNC
from Debian's package (/usr/share/novnc, served at /ui/novnc/), and the two reads the
pages need beside the API: who the token is (/api/v1/session) and the path policy in
effect (/api/v1/policy/paths).

Every page is index.html: the views route on the client (/ui/vms, /ui/vms/NAME,
/ui/vms/NAME/console, /ui/host), so each has its own URL. The pages hold no data;
everything they show comes from the API with the token the user gave (kept in the
tab's sessionStorage), so the files themselves are open to anyone.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

import trio
from quart import Response, request

from agent.config import Config
from agent.errors import NotFoundError
from agent.policy.paths import Policy
from agent.transports.http.api import API, Route, ok, state
from agent.transports.http.auth import bearer_token

STATIC = Path(__file__).parent / "static"
NOVNC = Path("/usr/share/novnc")
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css"}
# The pages load nothing from elsewhere and are never framed.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _inside(root: Path, relative: str) -> Path | None:
    """`root/relative` when it is a file inside `root` (no '..', no link out)."""
    try:
        path = (root / relative).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        return None
    return path


def _read(root: Path, relative: str) -> tuple[bytes, str] | None:
    path = _inside(root, relative)
    if path is None:
        return None
    kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
    kind = kind or "application/octet-stream"
    if kind.startswith("text/") or kind.endswith(("json", "javascript", "svg+xml")):
        kind += "; charset=utf-8"
    return path.read_bytes(), kind


async def _file(root: Path, relative: str) -> Response:
    found = await trio.to_thread.run_sync(_read, root, relative)
    if found is None:
        raise NotFoundError(f"/ui/{relative} not found", field="path", reason="not_found")
    body, kind = found
    return Response(body, content_type=kind, headers=_HEADERS)


async def ui_page(rest: str = "") -> Response:
    """A static file, noVNC's, or the page (index.html) for any view's URL."""
    if rest.startswith("static/"):
        return await _file(STATIC, rest.removeprefix("static/"))
    if rest.startswith("novnc/"):
        return await _file(NOVNC, rest.removeprefix("novnc/"))
    return await _file(STATIC, "index.html")


async def ui_session() -> Response:
    """Who the request's token is and what it may do (the page enables buttons by it)."""
    api = state()
    principal = api.tokens.authenticate(bearer_token(request.headers.get("Authorization")))
    return ok(
        {
            "name": principal.name,
            "scopes": sorted(principal.scopes),
            "tokens_required": api.tokens.required,
        }
    )


async def ui_policy() -> Response:
    """The path policy in effect: image roots (with pools'), passthrough, disk size cap."""
    services = state().services
    policy = services.find(Policy)
    config = services.find(Config)
    if policy is None or config is None:
        raise NotFoundError("This agent has no policy to show", reason="not_configured")
    return ok(
        {
            "image_roots": list(policy.configured_roots),
            "pool_roots": list(policy.pool_roots) if policy.include_pools else [],
            "include_pool_paths": policy.include_pools,
            "allow_passthrough": policy.allow_passthrough,
            "max_disk_size_gb": config.max_disk_size_gb,
            "max_concurrent_jobs": config.max_concurrent_jobs,
        }
    )


ROUTES = [
    Route("GET", "/ui", None, "The browser UI", view=ui_page, raw="text/html"),
    Route("GET", "/ui/<path:rest>", None, "The browser UI's views and files", view=ui_page),
    Route(
        "GET",
        f"{API}/session",
        None,  # any valid token: the view authenticates it (401 without one)
        "Who this token is and its scopes (the UI's login)",
        view=ui_session,
        errors=(401,),
    ),
    Route(
        "GET",
        f"{API}/policy/paths",
        "read",
        "The path policy in effect (image roots, passthrough, max disk size); the "
        "operation allowlist is GET /api/v1/policy",
        view=ui_policy,
        errors=(401, 403),
    ),
]
