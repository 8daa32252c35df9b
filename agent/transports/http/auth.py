"""API tokens: random bearer tokens with scopes, kept in config only as SHA-256 hashes.

A token is `hat_` + 43 url-safe characters (256 random bits), so a hash of it
needs no salt or stretching: it cannot be guessed, only stolen, and the hash
is useless to whoever steals the config. Lookup compares the presented
token's hash with every configured hash in constant time.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import get_args

from agent.core import submitter
from agent.errors import ForbiddenError, UnauthorizedError
from agent.policy.allowlist import Caller
from agent.transports.http.settings import Scope, TokenConfig

SCOPES: tuple[Scope, ...] = get_args(Scope)
TOKEN_PREFIX = "hat_"  # noqa: S105 (a recognisable prefix, not a secret)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(name: str, scopes: Iterable[Scope]) -> tuple[str, TokenConfig]:
    """A new random token and the config entry that admits it."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    entry = TokenConfig(name=name, sha256=hash_token(token), scopes=sorted(set(scopes)))
    return token, entry


def token_entry_toml(entry: TokenConfig) -> str:
    scopes = ", ".join(f'"{scope}"' for scope in entry.scopes)
    return (
        f'[[http.tokens]]\nname = "{entry.name}"\nsha256 = "{entry.sha256}"\nscopes = [{scopes}]\n'
    )


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name and what it may do."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    @property
    def submitter(self) -> str | None:
        """The caller as the submitter recorded with its jobs (None: anonymous)."""
        return None if self is ANONYMOUS else submitter.of_token(self.name)

    @functools.cached_property
    def caller(self) -> Caller:
        """The caller as the intake (and its allowlist) sees it: a token over HTTP."""
        return Caller(
            "http",
            token=None if self is ANONYMOUS else self.name,
            privileged=self.allows("admin"),
            submitter=self.submitter,
        )


ANONYMOUS = Principal("anonymous", frozenset(SCOPES))


class TokenTable:
    """The configured tokens; answers who a request's Authorization header is."""

    def __init__(self, tokens: Sequence[TokenConfig], *, required: bool = True) -> None:
        self.required = required
        self._entries = [
            (bytes.fromhex(entry.sha256), Principal(entry.name, frozenset(entry.scopes)))
            for entry in tokens
        ]

    def authenticate(self, token: str | None) -> Principal:
        """The principal of a bearer token; UnauthorizedError if missing or unknown."""
        if not self.required:
            return ANONYMOUS
        if not token:
            raise UnauthorizedError(
                "A bearer token is required",
                reason="Send 'Authorization: Bearer <token>'",
            )
        presented = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        # Every entry is compared, so the time taken does not say which one matched.
        for digest, principal in self._entries:
            if hmac.compare_digest(presented, digest) and found is None:
                found = principal
        if found is None:
            raise UnauthorizedError("The token is not valid", reason="Unknown token")
        return found

    def authorize(self, token: str | None, scope: Scope) -> Principal:
        """authenticate, then ForbiddenError unless the token has `scope` (or admin)."""
        principal = self.authenticate(token)
        if not principal.allows(scope):
            raise ForbiddenError(
                f"Token '{principal.name}' lacks the '{scope}' scope",
                field="scope",
                reason=f"Requires scope '{scope}'",
            )
        return principal


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value."""
    if not authorization:
        return None
    kind, _, token = authorization.partition(" ")
    if kind.lower() != "bearer":
        return None
    return token.strip() or None
