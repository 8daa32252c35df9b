"""Templates over HTTP (Kimchi's /templates) and `POST /vms {"template": ...}`: a VM
from a template, as a vm.create job (202), 409 when a VM of that name exists."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pydantic
from pydantic import BaseModel, ConfigDict, Field, RootModel
from quart import Response, request

from agent.errors import ConflictError, NotFoundError, UnavailableError
from agent.handlers.domain_xml import NAME_PATTERN
from agent.handlers.vm import DefinePayload
from agent.handlers.vm_create import TemplateSpec
from agent.jobs import raise_validation_error
from agent.transports.http.api import ok, state
from agent.transports.http.resource_kit import (
    ACT_ERRORS,
    READ_ERRORS,
    act,
    add_read,
    add_route,
    resource_view,
)
from agent.transports.http.routes import json_body
from agent.view.actions import Action
from agent.view.templates import TemplateCatalog


class TemplateInfo(TemplateSpec):
    created_at: str
    updated_at: str


class TemplateList(BaseModel):
    model_config = ConfigDict(defer_build=True)

    templates: list[TemplateInfo]
    total: int


class VmFromTemplate(BaseModel):
    """`POST /vms` with a template: Kimchi's body."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    template: str = Field(pattern=NAME_PATTERN, description="the template's name")
    name: str | None = Field(
        default=None, pattern=NAME_PATTERN, description="default: TEMPLATE-xxxxxx"
    )
    storagepool: str | None = Field(
        default=None, pattern=NAME_PATTERN, description="default: the template's"
    )


class VmPostBody(RootModel[DefinePayload | VmFromTemplate]):
    """POST /vms: vm.define's body (`xml` or `spec`), or Kimchi's VM from a template."""

    model_config = ConfigDict(defer_build=True)


CREATE_VM = Action("create", "vm.create", "Create a VM from a template", frozenset())


def catalog() -> TemplateCatalog:
    found = state().services.find(TemplateCatalog)
    if found is None:
        raise UnavailableError("This agent keeps no templates", reason="not_configured")
    return found


async def _body() -> Any:
    data = await request.get_data(cache=True, as_text=False, parse_form_data=False)
    return json_body(data, request.headers.get("Content-Type", "")) if data.strip() else {}


async def _list() -> Response:
    found = await catalog().list()
    return ok({"templates": found, "total": len(found)})


async def _get(name: str) -> Response:
    return ok(await catalog().get(name))


async def _create() -> Response:
    created = await catalog().create(await _body())
    response = ok(created, 201)
    response.headers["Location"] = f"{request.path}/{quote(created['name'], safe='')}"
    return response


async def _replace(name: str) -> Response:
    return ok(await catalog().replace(name, await _body()))


async def _delete(name: str) -> Response:
    await catalog().delete(name)
    return ok({"name": name, "deleted": True})


async def vm_from_template(raw: dict[str, Any]) -> Response:
    """POST /vms with a `template`: check the name is free (409), then submit vm.create."""
    try:
        body = VmFromTemplate.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise_validation_error(exc, prefix="body")
    key = request.headers.get("Idempotency-Key")
    data = await catalog().vm_create_data(body.template, body.name, body.storagepool, key)
    name = data["name"]
    try:
        current = await resource_view().vm_state(name)
    except NotFoundError:
        current = None
    # A retry (its key names a job already) is answered by that job, as act() does.
    if current is not None and not await _known(key):
        raise ConflictError(
            f"a VM named {name!r} exists",
            field="name",
            reason="exists",
            details={"state": current, "action": "create"},
        )
    return await act(CREATE_VM, "VM", name, None, data)


async def _known(key: str | None) -> bool:
    if key is None:
        return False
    try:
        await state().intake.status(key)
    except NotFoundError:
        return False
    return True


_WRITE = {"scope": "submit", "errors": ACT_ERRORS}

add_read("/templates", "template_list", _list, "VM templates", answer=TemplateList)
add_route(
    "POST",
    "/templates",
    "template_create",
    _create,
    summary="Add a template (checked by the path policy vm.define's disks pass)",
    status=201,
    body=TemplateSpec,
    answer=TemplateInfo,
    **_WRITE,
)
add_read(
    "/templates/<name>",
    "template_detail",
    _get,
    "One template",
    answer=TemplateInfo,
    errors=READ_ERRORS,
)
add_route(
    "PUT",
    "/templates/<name>",
    "template_replace",
    _replace,
    summary="Replace a template (its name stays)",
    body=TemplateSpec,
    answer=TemplateInfo,
    **_WRITE,
)
add_route(
    "DELETE",
    "/templates/<name>",
    "template_delete",
    _delete,
    summary="Remove a template (VMs made from it stay)",
    **_WRITE,
)
