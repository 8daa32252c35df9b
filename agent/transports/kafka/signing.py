"""Signed fleet jobs: Ed25519 over the exact message a job arrives in.

The signature covers the value bytes, the topic (its target: a host, a pool or
the broadcast, whose selector is inside the value), the key and the moment of
signing, so a job signed for one host cannot be replayed to another, and an
old one is refused after `signature_max_age_seconds`. Within that window a
replay is the same job_id, which the store answers as a duplicate.

Headers: `hostagent-key-id`, `hostagent-signed-at` (Unix seconds) and
`hostagent-signature` (base64 of the 64-byte signature).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.errors import ConfigError, ForbiddenError, UnauthorizedError

KEY_ID = "hostagent-key-id"
SIGNATURE = "hostagent-signature"
SIGNED_AT = "hostagent-signed-at"
# Changing what is signed changes this, so an old signature never verifies as a new form.
_CONTEXT = b"hostagent-job-v1"
# Headers as librdkafka hands them over (and as a producer takes them).
Headers = Sequence[tuple[str, bytes | None]]


def signed_bytes(*, topic: str, key: bytes | None, signed_at: str, value: bytes) -> bytes:
    """What the signature covers; each part but the last length-prefixed, so none can shift."""
    parts = [_CONTEXT, topic.encode(), key or b"", signed_at.encode()]
    head = b"".join(len(part).to_bytes(4, "big") + part for part in parts)
    return head + value


def sign(
    private_key: Ed25519PrivateKey,
    key_id: str,
    *,
    topic: str,
    key: bytes | None,
    value: bytes,
    now: float | None = None,
) -> list[tuple[str, str | bytes | None]]:
    """The headers that make `value`, sent to `topic` under `key`, a signed job."""
    signed_at = str(int(time.time() if now is None else now))
    message = signed_bytes(topic=topic, key=key, signed_at=signed_at, value=value)
    signature = base64.b64encode(private_key.sign(message))
    return [(KEY_ID, key_id.encode()), (SIGNED_AT, signed_at.encode()), (SIGNATURE, signature)]


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    public_key: Ed25519PublicKey
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


@dataclass(frozen=True)
class Signer:
    """Who signed a job, once the signature has been checked."""

    key_id: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


class Verifier:
    """Checks a job message's signature against the keys the host trusts."""

    def __init__(self, keys: Sequence[TrustedKey], *, max_age_seconds: float) -> None:
        self._keys = {key.key_id: key for key in keys}
        self._max_age = max_age_seconds

    def verify(
        self,
        *,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers,
        now: float | None = None,
    ) -> Signer:
        """The signer, or UnauthorizedError/ForbiddenError naming the header and the reason."""
        found = _header_map(headers)
        if SIGNATURE not in found or KEY_ID not in found:
            raise UnauthorizedError(
                "The job is not signed",
                field=SIGNATURE,
                reason=f"missing {SIGNATURE} or {KEY_ID} header (kafka.require_signatures)",
            )
        key_id = found[KEY_ID].decode(errors="replace")
        trusted = self._keys.get(key_id)
        if trusted is None:
            raise UnauthorizedError(
                "The job is signed by a key this host does not trust",
                field=KEY_ID,
                reason=f"unknown key id {key_id[:64]!r}",
            )
        signed_at = found.get(SIGNED_AT, b"").decode(errors="replace")
        if not (signed_at.isascii() and signed_at.isdigit() and len(signed_at) <= 12):
            raise UnauthorizedError(
                "The job's signing time is missing or malformed",
                field=SIGNED_AT,
                reason="expected Unix seconds",
            )
        try:
            signature = base64.b64decode(found[SIGNATURE], validate=True)
            message = signed_bytes(topic=topic, key=key, signed_at=signed_at, value=value)
            trusted.public_key.verify(signature, message)
        except (InvalidSignature, binascii.Error, ValueError) as exc:
            raise UnauthorizedError(
                "The job's signature does not verify",
                field=SIGNATURE,
                reason=f"not a signature of this message, topic and key by {key_id}",
            ) from exc
        age = (time.time() if now is None else now) - int(signed_at)
        if abs(age) > self._max_age:
            raise UnauthorizedError(
                "The job's signature is too old (or from the future): a replay is refused",
                field=SIGNED_AT,
                reason=f"signed {round(age)} s ago; kafka.signature_max_age_seconds is "
                f"{self._max_age:g}",
            )
        if not trusted.allows("submit"):
            raise ForbiddenError(
                "The key that signed the job may not submit jobs",
                field=KEY_ID,
                reason=f"key {key_id} lacks the submit scope",
            )
        return Signer(key_id=key_id, scopes=trusted.scopes)


def _header_map(headers: Headers) -> Mapping[str, bytes]:
    # The first of a repeated header counts (as it does where the signature was made).
    found: dict[str, bytes] = {}
    for name, value in headers:
        if value is not None:
            found.setdefault(name, value)
    return found


def load_public_key(text: str, *, field: str) -> Ed25519PublicKey:
    """A public key from base64 of its 32 raw bytes, or from PEM."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            loaded = serialization.load_pem_public_key(text.encode())
        else:
            loaded = Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ConfigError(
            "Not an Ed25519 public key", field=field, reason=f"base64 of 32 bytes or PEM: {exc}"
        ) from exc
    if not isinstance(loaded, Ed25519PublicKey):
        raise ConfigError("Not an Ed25519 public key", field=field, reason="another key type")
    return loaded


def public_key_text(key: Ed25519PublicKey) -> str:
    """The config's form of a public key: base64 of its 32 raw bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_private_key(path: Path) -> tuple[str, Ed25519PrivateKey]:
    """The key id and private key of a file `hostagent key generate` wrote.

    The file is PEM (PKCS#8); its key id is on a `key-id: NAME` line before it.
    """
    field = "--key"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"Cannot read the signing key {path}", field=field, reason=exc.strerror
        ) from exc
    key_id = ""
    for line in text.splitlines():
        if line.startswith("key-id:"):
            key_id = line.partition(":")[2].strip()
    if not key_id:
        raise ConfigError(
            f"The signing key {path} names no key id", field=field, reason="no 'key-id:' line"
        )
    pem = text[text.find("-----BEGIN") :].encode()
    try:
        loaded = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"The signing key {path} is not a PEM private key", field=field, reason=str(exc)
        ) from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(
            f"The signing key {path} is not an Ed25519 key", field=field, reason="wrong key type"
        )
    return key_id, loaded


def private_key_file(key_id: str, key: Ed25519PrivateKey) -> str:
    """The text of a signing key file: its id, then the PEM."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return f"key-id: {key_id}\n{pem}"
