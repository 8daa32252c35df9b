"""Installed runbooks: the YAML and JSON files of `[runbooks] dirs`, each identified
by name, version and the sha256 of its file, listed in capabilities."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent.errors import AgentError, ValidationError
from agent.jobs import parse_json
from agent.runbooks.model import Runbook, parse_runbook

if TYPE_CHECKING:
    from agent.config import Config

log = structlog.get_logger("agent.runbooks")
SUFFIXES = (".yaml", ".yml", ".json")
MAX_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Installed:
    """A runbook found in a directory, with its identity."""

    runbook: Runbook
    path: Path
    sha256: str

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.runbook.name,
            "version": self.runbook.version,
            "sha256": self.sha256,
            "description": self.runbook.description,
            "path": str(self.path),
        }


def read_runbook_file(path: Path) -> Installed:
    """Parse and validate one file (blocking); the AgentError naming the field."""
    with path.open("rb") as file:
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValidationError(
            f"{path}: over {MAX_FILE_BYTES} bytes", field="runbook", reason="file too large"
        )
    return Installed(parse_runbook(parse_text(data, path.suffix)), path, _sha256(data))


def parse_text(data: bytes, suffix: str) -> Any:
    """A document from JSON, or from YAML (safe_load: plain data only, no tags)."""
    if suffix == ".json":
        return parse_json(data)
    import yaml  # noqa: PLC0415 (~1 MB an agent without YAML runbooks never needs)

    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "not YAML"
        raise ValidationError(f"Not valid YAML: {exc}", field="runbook", reason=reason) from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inline_sha256(document: dict[str, Any]) -> str:
    """The identity of an inline runbook: the sha256 of its canonical JSON."""
    return _sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode())


class RunbookLibrary:
    """The installed runbooks by name and version; reloaded with the config (SIGHUP)."""

    def __init__(self, dirs: list[Path]) -> None:
        self._dirs = list(dirs)
        self._by_name: dict[str, dict[int, Installed]] = {}
        # Files that could not be installed: {path, error}; logged at load.
        self.problems: list[dict[str, Any]] = []
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every load (capabilities list the runbooks)."""
        self._listeners.append(listener)

    def load(self, *, quiet: bool = False) -> None:
        """Read every directory again (blocking: at start and on reload). `quiet`: log
        nothing (the CLI reports itself)."""
        found: dict[str, dict[int, Installed]] = {}
        problems: list[dict[str, Any]] = []
        for directory in self._dirs:
            try:
                paths = sorted(p for p in directory.iterdir() if p.suffix in SUFFIXES)
            except FileNotFoundError:
                continue  # no directory, no runbooks: the default on most hosts
            except OSError as exc:
                problems.append({"path": str(directory), "error": str(exc)})
                continue
            for path in paths:
                if path.name.startswith(".") or not path.is_file():
                    continue
                try:
                    installed = read_runbook_file(path)
                except (AgentError, OSError) as exc:
                    message = exc.message if isinstance(exc, AgentError) else str(exc)
                    problems.append({"path": str(path), "error": message})
                    continue
                versions = found.setdefault(installed.runbook.name, {})
                clash = versions.get(installed.runbook.version)
                if clash is not None:
                    problems.append(
                        {"path": str(path), "error": f"same name and version as {clash.path}"}
                    )
                    continue
                versions[installed.runbook.version] = installed
        self._by_name, self.problems = found, problems
        for listener in self._listeners:
            listener()
        if quiet:
            return
        for problem in problems:
            log.warning("runbooks.not_installed", **problem)
        log.info("runbooks.loaded", count=sum(len(v) for v in found.values()))

    def reload(self, config: Config) -> None:
        self._dirs = list(config.runbooks.dirs)
        self.load()

    def installed(self) -> list[Installed]:
        return [
            versions[number]
            for _, versions in sorted(self._by_name.items())
            for number in sorted(versions)
        ]

    def get(self, name: str, version: int | None = None, *, field: str = "runbook") -> Installed:
        """The named runbook (its highest version when none is given)."""
        versions = self._by_name.get(name)
        if not versions:
            raise ValidationError(
                f"No runbook named {name!r} is installed", field=field, reason="unknown runbook"
            )
        if version is None:
            return versions[max(versions)]
        try:
            return versions[version]
        except KeyError:
            have = ", ".join(str(v) for v in sorted(versions))
            raise ValidationError(
                f"Runbook {name!r} has no version {version} (installed: {have})",
                field="version",
                reason=f"installed versions: {have}",
            ) from None

    async def describe(self) -> dict[str, Any]:
        """Capabilities' `runbooks`: what is installed, so a fleet can find runbook X v3."""
        return {
            "runbooks": [
                {k: v for k, v in item.identity().items() if k != "path"}
                for item in self.installed()
            ]
        }
