"""What a job acts on, read from its payload for its log lines: `job.started
operation=vm.suspend domain=web1`, `path=/var/lib/hostagent/images/a.qcow2`; and
what a refused document gave the refused field, for every transport's refusal line
(`field=payload.data.path value=/etc/shadow`, a secret's value redacted).

Generic on purpose: no handler declares it. The payload's data is read for the
keys that name a target (domain, pool, volume, network, snapshot, uuid, path
and *_path), at its top level and one object down (`image.path`, `spec.name`);
a bare `name` is named after the operation's namespace (vm.* -> domain,
storage.pool.* -> pool, storage.volume.* -> volume, network.* -> network).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_NAMED = frozenset({"domain", "pool", "volume", "network", "snapshot", "uuid", "path"})
# The longest prefix wins: storage.volume.* is a volume, storage.pool.* a pool.
_NAME_BY_NAMESPACE = (
    ("storage.volume.", "volume"),
    ("storage.pool.", "pool"),
    ("vm.", "domain"),
    ("network.", "network"),
)
# A log line names its target; it does not carry a payload.
MAX_VALUE = 200
# A field whose value is a secret: its value is never logged.
_SECRET = re.compile(r"password|passphrase|secret|token|credential|private_key", re.IGNORECASE)
REDACTED = "<redacted>"


def job_target(operation: str, data: Any) -> dict[str, str]:
    """The target fields of a job (empty when its payload names none)."""
    if not isinstance(data, Mapping):
        return {}
    name_key = next(
        (key for prefix, key in _NAME_BY_NAMESPACE if operation.startswith(prefix)), "name"
    )
    found: dict[str, str] = {}
    for level in (data, *(value for value in data.values() if isinstance(value, Mapping))):
        for key, value in level.items():
            if not isinstance(value, str | int) or isinstance(value, bool):
                continue
            if key == "name":
                key = name_key  # noqa: PLW2901 (the name the line shows)
            elif key not in _NAMED and not key.endswith("_path"):
                continue
            found.setdefault(key, str(value)[:MAX_VALUE])
    return found


def refused_value(field: str, document: bytes) -> str | None:
    """The value a JSON document (a request body, a spool file, a Kafka record) gave
    `field` (a dotted path: payload.data.disks.0.path), as a log line shows it: None
    when the document has none, redacted for a secret, cut at MAX_VALUE."""
    if not field or not document:
        return None
    try:
        value: Any = json.loads(document)
    except (ValueError, RecursionError):  # the document the refusal was about: anything
        return None
    for part in field.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    if _SECRET.search(field):
        return REDACTED
    shown = value if isinstance(value, str) else json.dumps(value)
    return shown if len(shown) <= MAX_VALUE else shown[:MAX_VALUE] + "..."
