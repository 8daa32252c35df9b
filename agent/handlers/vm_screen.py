"""vm.screenshot: the domain's screen, as a job artifact (and for the resource view)."""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field

from agent.config import Config
from agent.core.artifacts import ARTIFACTS, create_artifact
from agent.core.context import JobContext
from agent.core.registry import handler
from agent.handlers import connection
from agent.handlers.vm import DomainRef, domain_resource, summary
from agent.hypervisor.summaries import capture_screen


class ScreenshotPayload(DomainRef):
    screen: int = Field(default=0, ge=0)


_EXTENSIONS = {"image/png": "png", "image/x-portable-pixmap": "ppm"}


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
