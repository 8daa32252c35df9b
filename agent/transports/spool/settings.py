"""The [spool] section of the configuration."""

from __future__ import annotations

from pydantic import Field

from agent.config import RESTART, Section


class SpoolConfig(Section):
    enabled: bool = Field(default=True, json_schema_extra=RESTART)
    max_file_bytes: int = Field(default=1024 * 1024, gt=0)
    # Empty means any owner; otherwise files owned by other uids are quarantined.
    allowed_uids: list[int] = Field(default_factory=list)
    # A file in cancel/ cancels only the jobs its owner submitted (owned the job file);
    # root, the agent's user and members of this group cancel any job.
    admin_group: str = ""
    # A file that does not parse yet is left alone until unchanged this long
    # (it may still be being copied in).
    settle_seconds: float = Field(default=2.0, ge=0)
    rescan_seconds: float = Field(default=30.0, gt=0)
    # Ignored since the watcher sleeps on inotify itself (inotify.py); kept so old configs load.
    watch_step_ms: int = Field(default=1, ge=1, json_schema_extra=RESTART)
    claim_batch: int = Field(default=256, ge=1)
