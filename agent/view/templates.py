"""VM templates (Kimchi's /templates): kept in the job store, checked by the path policy
vm.define's disks pass, and turned into vm.create jobs.

A template is data only: creating one runs nothing on the host. A VM made
from one is a `vm.create` job whose payload holds the template as it is at
submission, so the job is the same whatever happens to the template later.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, Protocol, runtime_checkable

import pydantic
import trio

from agent.config import Config
from agent.errors import BadRequestError
from agent.handlers.vm_create import TemplateSpec, check_template
from agent.jobs import raise_validation_error
from agent.policy.paths import Policy

_SHOWN = ("created_at", "updated_at")


@runtime_checkable
class TemplateRows(Protocol):
    """What the catalogue needs of a store (agent.store.SqliteStore has it)."""

    async def list_templates(self) -> list[dict[str, Any]]: ...
    async def get_template(self, name: str) -> dict[str, Any]: ...
    async def put_template(
        self, name: str, document: dict[str, Any], *, create: bool
    ) -> dict[str, Any]: ...
    async def delete_template(self, name: str) -> None: ...


def parse_template(raw: Any, *, prefix: str = "body") -> TemplateSpec:
    """A template from JSON; 400 naming the field."""
    try:
        return TemplateSpec.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise_validation_error(exc, prefix=prefix)
    raise AssertionError("unreachable")


def _suffix(key: str | None) -> str:
    if key is None:
        return secrets.token_hex(3)
    return hashlib.sha256(key.encode()).hexdigest()[:6]


class TemplateCatalog:
    """The host's templates: list, get, create, replace, delete, and the VMs made from them."""

    def __init__(self, rows: TemplateRows, policy: Policy, config: Config) -> None:
        self.rows = rows
        self.policy = policy
        self.config = config

    async def _checked(self, spec: TemplateSpec) -> dict[str, Any]:
        # The image check reads files: in a thread.
        await trio.to_thread.run_sync(
            lambda: check_template(
                self.policy, spec, prefix="body.", max_disk_gb=self.config.max_disk_size_gb
            )
        )
        return spec.model_dump(mode="json")

    async def list(self) -> list[dict[str, Any]]:
        return await self.rows.list_templates()

    async def get(self, name: str) -> dict[str, Any]:
        return await self.rows.get_template(name)

    async def create(self, raw: Any) -> dict[str, Any]:
        """A new template (409 when the name is taken)."""
        spec = parse_template(raw)
        return await self.rows.put_template(spec.name, await self._checked(spec), create=True)

    async def replace(self, name: str, raw: Any) -> dict[str, Any]:
        """PUT: the whole template anew (404 when there is none); its name stays."""
        if isinstance(raw, dict):
            given = raw.get("name", name)
            if given != name:
                raise BadRequestError(
                    "A template's name cannot change",
                    field="body.name",
                    reason=f"the URL names {name!r}",
                )
            raw = {**raw, "name": name}
        spec = parse_template(raw)
        return await self.rows.put_template(name, await self._checked(spec), create=False)

    async def delete(self, name: str) -> None:
        await self.rows.delete_template(name)

    async def vm_create_data(
        self, template: str, name: str | None, storagepool: str | None, key: str | None = None
    ) -> dict[str, Any]:
        """The payload data of the vm.create job for a VM from `template` (404 when none);
        an unnamed VM's name comes from the request's idempotency `key` when there is
        one, so a retried request is the same job."""
        found = await self.rows.get_template(template)
        spec = {key: value for key, value in found.items() if key not in _SHOWN}
        data: dict[str, Any] = {
            # Kimchi names an unnamed VM after its template.
            "name": name or f"{template[:56]}-{_suffix(key)}",
            "template": spec,
        }
        if storagepool is not None:
            data["storagepool"] = storagepool
        return data
