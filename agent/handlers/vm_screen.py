"""vm.screenshot: the domain's screen, as a job artifact (and for the resource view)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from pydantic import Field

from agent.config import Config
from agent.core.artifacts import ARTIFACTS, create_artifact
from agent.core.context import JobContext
from agent.core.registry import handler
from agent.handlers import connection
from agent.handlers.vm import DomainRef, domain_resource, summary


class ScreenshotPayload(DomainRef):
    screen: int = Field(default=0, ge=0)


_EXTENSIONS = {"image/png": "png", "image/x-portable-pixmap": "ppm"}


def capture_screen(conn: Any, dom: Any, screen: int) -> tuple[str, bytes]:
    """The domain's screen now: (MIME type, image bytes). Blocking: in libvirt's thread."""
    stream = conn.newStream(0)
    chunks = []
    try:
        mime = dom.screenshot(stream, screen, 0)
        while chunk := stream.recv(1 << 16):
            chunks.append(chunk)
        stream.finish()
    except BaseException:
        with contextlib.suppress(Exception):  # the error being raised is the one to report
            stream.abort()
        raise
    return str(mime), b"".join(chunks)


@handler("vm.screenshot", payload=ScreenshotPayload, rerun_safe=True, resource=domain_resource)
async def screenshot(payload: ScreenshotPayload, ctx: JobContext) -> dict[str, Any]:
    """Save the domain's screen as a job artifact (PNG when the driver gives PNG)."""
    # The folder is derived from the job id, never joined from it (agent.core.artifacts).
    root = ctx.get(Config).state_dir / ARTIFACTS

    def run(conn: Any) -> dict[str, Any]:
        dom = payload.lookup(conn)
        mime, image = capture_screen(conn, dom, payload.screen)
        fd, path = create_artifact(root, ctx.job_id, f"screen.{_EXTENSIONS.get(mime, 'bin')}")
        with os.fdopen(fd, "wb") as out:
            out.write(image)
        return summary(dom, path=str(path), mime_type=mime, size_bytes=len(image))

    return await connection(ctx).call(run)


HANDLERS = (screenshot,)
