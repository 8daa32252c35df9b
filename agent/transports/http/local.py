"""The local API: the same app and routes over a Unix socket, authorised by the
peer's credentials (SO_PEERCRED) instead of a token, as libvirt's and Docker's
sockets are.

Who may do what is decided by the connecting process's uid and its groups in
the group database: root, the agent's own user and members of
`http.socket_admin_group` are admins; members of `http.socket_submit_group`
may submit and read, and cancel the jobs they submitted (the submitter recorded
with each job, agent.core.submitter); anyone else is refused. The socket file
is world-connectable on purpose: the check is the kernel-reported uid, not the
file mode.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio

from agent.core import submitter
from agent.errors import ConfigError, ForbiddenError
from agent.transports.http.settings import HttpConfig, Scope

log = structlog.get_logger("agent.http.local")

PEER_KEY = "hostagent.peer"  # where the ASGI scope carries the peer of a socket connection
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_SUBMITTER_SCOPES = frozenset({"read", "submit", "cancel"})


@dataclass(frozen=True)
class Peer:
    """The process at the other end of a local connection, as the kernel reports it."""

    pid: int
    uid: int
    gid: int

    @property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)

    @property
    def label(self) -> str:
        """How audit lines and the jobs it submits name this peer."""
        return submitter.of_uid(self.uid)

    def groups(self) -> set[int]:
        """The peer's primary and supplementary groups, from the group database."""
        return submitter.groups_of(self.uid, self.gid)


def peer_credentials(sock: socket.socket | trio.socket.SocketType) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid, uid, gid)


@dataclass(frozen=True)
class PeerPolicy:
    """Which groups make a peer an admin or a submitter (gids resolved once per reload)."""

    admin_gid: int | None
    submit_gid: int | None

    @classmethod
    def from_config(cls, config: HttpConfig) -> PeerPolicy:
        return cls(
            submitter.group_id(config.socket_admin_group),
            submitter.group_id(config.socket_submit_group),
        )

    def scopes(self, peer: Peer) -> tuple[frozenset[str], bool]:
        """The peer's scopes, and whether its cancel is limited to its own jobs."""
        if submitter.is_admin(peer.uid, self.admin_gid, peer.gid):
            return frozenset({"admin"}), False
        if self.submit_gid is not None and self.submit_gid in peer.groups():
            return _SUBMITTER_SCOPES, True
        return frozenset(), False

    def authorize(self, peer: Peer, scope: Scope) -> bool:
        """Whether the peer holds `scope`; True with own_only is checked per job by the caller."""
        scopes, _ = self.scopes(peer)
        return "admin" in scopes or scope in scopes

    def check(self, peer: Peer, scope: Scope) -> None:
        if not self.authorize(peer, scope):
            raise ForbiddenError(
                f"User {peer.user} (uid {peer.uid}) may not use the local API for '{scope}'",
                field="scope",
                reason=f"Requires root, the admin group or the submit group for '{scope}'",
            )


SYSTEM_STATE_DIR = Path("/var/lib/hostagent")
SYSTEM_SOCKET = Path("/run/hostagent/api.sock")
# sun_path holds 108 bytes with the terminating NUL.
_MAX_SOCKET_PATH = 107


def local_socket_path(config: HttpConfig, state_dir: Path | None) -> Path | None:
    """Where the local API listens: http.socket, else <state_dir>/api.sock (None: no socket)."""
    if not config.socket_enabled:
        return None
    if config.socket is not None:
        return config.socket
    if state_dir is None:
        return None
    if state_dir == SYSTEM_STATE_DIR:
        # The system agent: in its RuntimeDirectory, where local users can reach it
        # (the state directory is closed to them).
        return SYSTEM_SOCKET
    path = state_dir / "api.sock"
    if len(os.fsencode(path.absolute())) > _MAX_SOCKET_PATH:
        # Only the default is skipped; an explicitly configured path that is too long
        # fails at bind time with the key named.
        log.warning("http.socket_path_too_long", path=str(path), hint="set http.socket")
        return None
    return path


def peer_of(scope: Mapping[str, Any]) -> Peer | None:
    """The peer of a request that came over the local socket (None: over TCP)."""
    peer = scope.get(PEER_KEY)
    return peer if isinstance(peer, Peer) else None


# Where job ownership lived before it was recorded with the job (agent.core.submitter).
_OLD_OWNER_BOOK = "socket-owners.sqlite3"


def remove_old_owner_book(directory: Path) -> None:
    """Remove the socket-owners.sqlite3 an older agent kept beside its socket (blocking)."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            (directory / f"{_OLD_OWNER_BOOK}{suffix}").unlink()


EXTENSION = "hostagent.local"  # where the quart app keeps the socket's LocalAccess


@dataclass
class LocalAccess:
    """The socket's policy, and who submitted a job (the intake's record); the transport
    swaps the policy on reload."""

    policy: PeerPolicy
    submitter_of: Callable[[str], Awaitable[str | None]]


def describe_peer(sock: socket.socket) -> dict[str, Any]:
    """What every request of a socket connection carries: its peer (OSError: unknown)."""
    return {PEER_KEY: peer_credentials(sock)}


def bind_socket(path: Path) -> socket.socket:
    """Listen on `path`, replacing a stale socket a previous run left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody answers: stale
        else:
            probe.close()
            raise ConfigError(
                f"config: http.socket: {path} is in use by another agent",
                field="http.socket",
                reason="Socket in use",
            )
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        # Connecting is open to all local users; what they may do is decided by uid.
        path.chmod(0o666)
        listener.listen(128)
    except OSError as exc:
        listener.close()
        raise ConfigError(
            f"config: http.socket: cannot listen on {path}: {exc.strerror}",
            field="http.socket",
            reason=str(exc.strerror),
        ) from exc
    listener.setblocking(False)
    return listener


__all__ = [
    "EXTENSION",
    "PEER_KEY",
    "LocalAccess",
    "Peer",
    "PeerPolicy",
    "bind_socket",
    "describe_peer",
    "local_socket_path",
    "peer_credentials",
    "peer_of",
    "remove_old_owner_book",
]
