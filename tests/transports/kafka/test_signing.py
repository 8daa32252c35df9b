"""Signed fleet jobs without a broker: what a signature covers, what is refused, the keys."""

from __future__ import annotations

import base64
from pathlib import Path

import pydantic
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli.command import main
from agent.errors import ConfigError, ForbiddenError, UnauthorizedError
from agent.transports.kafka.settings import KafkaConfig, KafkaKeyConfig
from agent.transports.kafka.signing import (
    SIGNATURE,
    TrustedKey,
    Verifier,
    load_private_key,
    load_public_key,
    sign,
)

NOW = 1_800_000_000.0
TOPIC = "hostagent.host.w1.jobs"
VALUE = b'{"job_id":"j1"}'


def verifier(key: Ed25519PrivateKey, *, scopes: tuple[str, ...] = ("submit",)) -> Verifier:
    trusted = TrustedKey("ops", key.public_key(), frozenset(scopes))
    return Verifier([trusted], max_age_seconds=300)


def headers(key: Ed25519PrivateKey, *, topic: str = TOPIC, now: float = NOW) -> list:  # type: ignore[type-arg]
    return sign(key, "ops", topic=topic, key=b"j1", value=VALUE, now=now)


def test_a_signed_job_verifies_with_its_scopes() -> None:
    key = Ed25519PrivateKey.generate()
    signer = verifier(key, scopes=("submit", "admin")).verify(
        topic=TOPIC, key=b"j1", value=VALUE, headers=headers(key), now=NOW + 10
    )
    assert signer.key_id == "ops"
    assert signer.scopes == {"submit", "admin"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"topic": "hostagent.host.w2.jobs"}, SIGNATURE),  # signed for another host
        ({"key": b"j2"}, SIGNATURE),
        ({"value": b'{"job_id":"j1","x":1}'}, SIGNATURE),
        ({"now": NOW + 301}, "hostagent-signed-at"),  # a replay after the window
        ({"now": NOW - 301}, "hostagent-signed-at"),  # signed in the future
    ],
)
def test_a_signature_covers_topic_key_value_and_time(change: dict, field: str) -> None:  # type: ignore[type-arg]
    key = Ed25519PrivateKey.generate()
    message = {"topic": TOPIC, "key": b"j1", "value": VALUE, "headers": headers(key), "now": NOW}
    with pytest.raises(UnauthorizedError) as caught:
        verifier(key).verify(**{**message, **change})
    assert caught.value.details["field"] == field


def test_unsigned_unknown_and_forged_signatures_are_refused_with_the_reason() -> None:
    key = Ed25519PrivateKey.generate()
    other = Ed25519PrivateKey.generate()
    check = verifier(key)
    with pytest.raises(UnauthorizedError, match="not signed"):
        check.verify(topic=TOPIC, key=b"j1", value=VALUE, headers=[], now=NOW)
    unknown = sign(key, "nobody", topic=TOPIC, key=b"j1", value=VALUE, now=NOW)
    with pytest.raises(UnauthorizedError) as caught:
        check.verify(topic=TOPIC, key=b"j1", value=VALUE, headers=unknown, now=NOW)
    assert caught.value.details["field"] == "hostagent-key-id"
    # Signed by another key under the trusted key's id.
    with pytest.raises(UnauthorizedError, match="does not verify"):
        check.verify(topic=TOPIC, key=b"j1", value=VALUE, headers=headers(other), now=NOW)
    garbage = [(n, b"%%%" if n == SIGNATURE else v) for n, v in headers(key)]
    with pytest.raises(UnauthorizedError, match="does not verify"):
        check.verify(topic=TOPIC, key=b"j1", value=VALUE, headers=garbage, now=NOW)


def test_a_key_without_the_submit_scope_may_not_submit() -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(ForbiddenError) as caught:
        verifier(key, scopes=("read",)).verify(
            topic=TOPIC, key=b"j1", value=VALUE, headers=headers(key), now=NOW
        )
    assert caught.value.details["reason"] == "key ops lacks the submit scope"


def test_public_keys_load_from_base64_or_pem_and_anything_else_is_a_config_error() -> None:
    public = Ed25519PrivateKey.generate().public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    for text in (base64.b64encode(raw).decode(), pem):
        assert load_public_key(text, field="k").public_bytes_raw() == raw
    with pytest.raises(ConfigError):
        load_public_key(base64.b64encode(raw[:31]).decode(), field="k")
    with pytest.raises(pydantic.ValidationError, match="public_key"):
        KafkaConfig.model_validate(
            {"keys": [{"id": "ops", "public_key": "not a key", "scopes": ["submit"]}]}
        )
    # A new install requires signatures.
    assert KafkaConfig().require_signatures is True


def test_key_generate_writes_a_private_key_and_prints_the_entry_agents_trust(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ops.key"
    assert main(["key", "generate", "--id", "ops-1", "--out", str(out), "--scopes", "submit"]) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    printed = capsys.readouterr().out
    entry_line = next(line for line in printed.splitlines() if line.startswith("public_key"))
    public_text = entry_line.split('"')[1]
    entry = KafkaKeyConfig(id="ops-1", public_key=public_text, scopes=["submit"])
    key_id, private = load_private_key(out)
    assert key_id == "ops-1"
    signed = sign(private, key_id, topic=TOPIC, key=None, value=VALUE, now=NOW)
    trusted = TrustedKey(
        entry.id, load_public_key(entry.public_key, field="k"), frozenset({"submit"})
    )
    Verifier([trusted], max_age_seconds=60).verify(
        topic=TOPIC, key=None, value=VALUE, headers=signed, now=NOW
    )
    # Never over an existing key.
    assert main(["key", "generate", "--id", "ops-1", "--out", str(out)]) != 0
