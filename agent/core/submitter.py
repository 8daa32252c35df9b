"""Who submitted a job, as recorded with it, and who may act on other people's jobs.

A local user is the same submitter over the socket (the peer's uid) and through
the spool (the uid that owned the job file when it was claimed), so either
door may cancel what the other took in. Blocking (passwd/group lookups): call
from a worker thread.
"""

from __future__ import annotations

import grp
import os
import pwd


def of_uid(uid: int) -> str:
    """A local user as a job's submitter."""
    return f"uid:{uid}"


def of_token(name: str) -> str:
    """An HTTP API token as a job's submitter."""
    return f"token:{name}"


def of_key(key_id: str) -> str:
    """A Kafka signing key as the submitter of the jobs it signed."""
    return f"key:{key_id}"


def group_names(gids: set[int]) -> frozenset[str]:
    """The names of these groups (a gid with no name: its number)."""
    names: set[str] = set()
    for gid in gids:
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            names.add(str(gid))
    return frozenset(names)


def group_id(name: str) -> int | None:
    """The gid of a group name; None for no name or a group that does not exist (yet):
    it grants nothing (sysusers creates it)."""
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def groups_of(uid: int, gid: int | None = None) -> set[int]:
    """The user's primary and supplementary groups, from the group database (`gid`:
    its primary group when known, as the kernel reports a peer's)."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:  # a uid with no passwd entry has only its primary group
        return set() if gid is None else {gid}
    primary = entry.pw_gid if gid is None else gid
    return {*os.getgrouplist(entry.pw_name, primary), primary}


def is_admin(uid: int, admin_gid: int | None, gid: int | None = None) -> bool:
    """Root, the agent's own user and members of the admin group act on any job."""
    if uid in (0, os.getuid()):
        return True
    return admin_gid is not None and admin_gid in groups_of(uid, gid)
