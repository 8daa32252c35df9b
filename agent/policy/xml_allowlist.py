"""XML checked against an allowlist: what the table does not describe is refused.

An allowlist maps an element's path (its tags from the root, '/'-separated,
no indexes: "domain/devices/disk/source") to `Allowed`: the attributes the
element may carry, each with a check of its value; the text it may hold (none
by default); and whether it may appear more than once under one parent. The
walk covers the whole tree, so a second `<devices>`, an attribute of another
namespace or a child nobody thought of is refused like any other unknown
thing, with the element's path (indexed where its tag repeats:
/domain/devices[2]) and the attribute named in the error. Namespace
declarations (xmlns:qemu=...) are refused too: nothing in a table uses one.

Parsing stays with ElementTree's expat parser, which expands no external
entities.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree as ET

from agent.errors import ForbiddenError, ValidationError

# Why a value is refused, or None when it passes.
Check = Callable[[str], str | None]


@dataclass(frozen=True)
class Allowed:
    """One element of an allowlist: its attributes (each with a check), its text, repeats."""

    attributes: Mapping[str, Check] = field(default_factory=dict)
    # None: the element holds no text (whitespace only).
    text: Check | None = None
    # May appear more than once under one parent (disks, NICs); otherwise at most once.
    repeats: bool = False


Allowlist = Mapping[str, Allowed]


def one_of(*values: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in values else f"not one of {', '.join(values)}"

    return check


def matches(pattern: str, what: str) -> Check:
    compiled = re.compile(pattern)

    def check(value: str) -> str | None:
        return None if compiled.fullmatch(value) else f"not {what}"

    return check


def integer(low: int, high: int) -> Check:
    def check(value: str) -> str | None:
        if value.isascii() and value.lstrip("-").isdigit() and low <= int(value) <= high:
            return None
        return f"not an integer from {low} to {high}"

    return check


def ip_address(version: int | None = None) -> Check:
    def check(value: str) -> str | None:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return "not an IP address"
        if version is not None and address.version != version:
            return f"not an IPv{version} address"
        return None

    return check


def loopback(value: str) -> str | None:
    """A listen address on this host only (VNC and SPICE have no other protection here)."""
    if value == "localhost":
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return "not an IP address"
    return None if address.is_loopback else "not a loopback address"


def check_xml(xml: str, allowlist: Allowlist, *, field: str, needs: str) -> ET.Element:
    """The parsed root, once every element, attribute and text of `xml` passed `allowlist`;
    ForbiddenError (field, reason, element, attribute) at the first thing that did not.
    `needs` says what the refused thing would take (in the reason)."""
    builder = _Builder()
    parser = ET.XMLParser(target=builder)  # noqa: S314 (expat expands no external entities)
    try:
        parser.feed(xml)
        root = parser.close()
    except ET.ParseError as exc:
        raise ValidationError(
            f"{field}: not well-formed XML: {exc}", field=field, reason="not well-formed XML"
        ) from exc
    walk = _Walk(allowlist, field, needs, builder)
    if builder.doctype_name is not None:
        # No spec writes one; its entities and default attributes are a second language
        # that libvirt's parser (libxml2) and this one need not read alike.
        raise walk.refuse(f"<!DOCTYPE {builder.doctype_name}>", None, "a document type declaration")
    tag = walk.name(root.tag)
    walk.element(root, tag, f"/{tag}")
    return root


class _Builder(ET.TreeBuilder):
    """ElementTree's tree, plus what it drops: namespace declarations (by element) and
    the DOCTYPE."""

    def __init__(self) -> None:
        super().__init__()
        self.doctype_name: str | None = None
        self.prefixes: dict[str, str] = {}  # namespace URI -> the prefix the document gave it
        self.declared: dict[ET.Element, list[tuple[str, str]]] = {}
        self._pending: list[tuple[str, str]] = []

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        self.doctype_name = name or "?"

    def start_ns(self, prefix: str, uri: str) -> None:
        self._pending.append((prefix, uri))
        self.prefixes.setdefault(uri, prefix)

    def start(self, tag: Any, attrs: dict[Any, Any]) -> ET.Element:
        element = super().start(tag, attrs)
        if self._pending:
            self.declared[element] = self._pending
            self._pending = []
        return element


class _Walk:
    def __init__(self, allowlist: Allowlist, field: str, needs: str, builder: _Builder) -> None:
        self.allowlist = allowlist
        self.field = field
        self.needs = needs
        self.prefixes = builder.prefixes
        self.declared = builder.declared

    def name(self, tag: str) -> str:
        """A tag as the document wrote it: qemu:commandline, not {http://...}commandline."""
        if not tag.startswith("{"):
            return tag
        uri, _, local = tag[1:].partition("}")
        prefix = self.prefixes.get(uri)
        return f"{prefix}:{local}" if prefix else f"{{{uri}}}{local}"

    def refuse(self, element: str, attribute: str | None, why: str) -> ForbiddenError:
        where = element if attribute is None else f"{element} attribute {attribute}"
        details = {"element": element}
        if attribute is not None:
            details["attribute"] = attribute
        return ForbiddenError(
            f"{self.field}: {where}: {why}",
            field=self.field,
            reason=f"{where}: {why}; {self.needs}",
            details=details,
        )

    def element(self, node: ET.Element, key: str, shown: str) -> None:
        allowed = self.allowlist.get(key)
        if allowed is None:
            raise self.refuse(shown, None, "an element the allowlist does not describe")
        for prefix, uri in self.declared.get(node, ()):
            declaration = f"xmlns:{prefix}" if prefix else "xmlns"
            raise self.refuse(shown, declaration, f"a namespace declaration ({uri})")
        for attribute, value in node.attrib.items():
            name = self.name(attribute)
            check = allowed.attributes.get(attribute)
            if check is None:
                raise self.refuse(shown, name, "an attribute the allowlist does not describe")
            why = check(value)
            if why is not None:
                raise self.refuse(shown, name, f"{_quoted(value)} is {why}")
        text = node.text or ""
        if allowed.text is not None:
            why = allowed.text(text)
            if why is not None:
                raise self.refuse(shown, None, f"text {_quoted(text)} is {why}")
        elif text.strip():
            raise self.refuse(shown, None, "holds text")
        counts: dict[str, int] = {}
        for child in node:
            counts[child.tag] = counts.get(child.tag, 0) + 1
        seen: dict[str, int] = {}
        for child in node:
            nth = seen[child.tag] = seen.get(child.tag, 0) + 1
            tag = self.name(child.tag)
            child_key = f"{key}/{tag}"
            child_shown = f"{shown}/{tag}[{nth}]" if counts[child.tag] > 1 else f"{shown}/{tag}"
            if child.tail and child.tail.strip():
                raise self.refuse(shown, None, "holds text between elements")
            child_allowed = self.allowlist.get(child_key)
            if child_allowed is not None and nth > 1 and not child_allowed.repeats:
                raise self.refuse(child_shown, None, f"a second <{tag}>")
            self.element(child, child_key, child_shown)


def _quoted(value: str, longest: int = 120) -> str:
    """A submitted value for an error message, cut short (it is echoed in the 403)."""
    return repr(value if len(value) <= longest else value[:longest] + "...")
