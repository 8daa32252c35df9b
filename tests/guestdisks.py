"""Small but real guest disks for the guestkit tests, built without any appliance.

A recipe is a root tree (path -> file, symlink or directory) that `mkfs.ext4 -d`
copies into a filesystem, which `qemu-img convert` turns into qcow2. libguestfs
inspects the result as it would any Debian guest: os-release, debian_version,
hostname, fstab, the dpkg database and a real ELF binary (for the architecture).
Built disks are cached under ~/.cache/hostagent-test-disks, keyed by a hash of
the recipe, so only a fresh machine (or a changed recipe) pays for building.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path.home() / ".cache" / "hostagent-test-disks"
# Bumped when the way a recipe becomes a disk changes (not needed when the recipe does).
BUILDER_VERSION = 1


@dataclass(frozen=True)
class Entry:
    """One thing in the root tree: text, a symlink target, or a directory."""

    text: str | None = None
    mode: int = 0o644
    symlink: str | None = None
    directory: bool = False


@dataclass
class Recipe:
    name: str
    entries: dict[str, Entry] = field(default_factory=dict)

    def file(self, path: str, text: str, mode: int = 0o644) -> None:
        self.entries[path] = Entry(text=text, mode=mode)

    def link(self, path: str, target: str) -> None:
        self.entries[path] = Entry(symlink=target)

    def directory(self, path: str) -> None:
        self.entries[path] = Entry(directory=True, mode=0o755)

    def digest(self) -> str:
        described = {
            "builder": BUILDER_VERSION,
            "entries": {
                path: [entry.text, entry.mode, entry.symlink, entry.directory]
                for path, entry in sorted(self.entries.items())
            },
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def dpkg_status(packages: dict[str, str], *, removed: tuple[str, ...] = ()) -> str:
    """A dpkg status file: `packages` installed (name -> version), `removed` with
    only their configuration left (dpkg keeps such stanzas; they are not installed)."""
    stanzas = [
        f"Package: {name}\nStatus: install ok installed\nPriority: optional\n"
        f"Architecture: amd64\nVersion: {version}\nDescription: {name} for tests\n"
        for name, version in packages.items()
    ]
    stanzas += [
        f"Package: {name}\nStatus: deinstall ok config-files\nPriority: optional\n"
        f"Architecture: amd64\nVersion: 1.0\nDescription: {name}, removed\n"
        for name in removed
    ]
    return "\n".join(stanzas)


def apt_list(packages: list[str]) -> str:
    """What the guest's apt downloaded from its repository (Packages index)."""
    return "\n".join(f"Package: {name}\nVersion: 1.0\nArchitecture: amd64\n" for name in packages)


def debian_root(
    name: str,
    *,
    hostname: str,
    version_id: str,
    codename: str,
    point_release: str,
    packages: dict[str, str],
) -> Recipe:
    """The files that make a tree look like a Debian guest to libguestfs' inspection."""
    recipe = Recipe(name)
    recipe.file(
        "etc/os-release",
        f'PRETTY_NAME="Debian GNU/Linux {version_id} ({codename})"\nNAME="Debian GNU/Linux"\n'
        f'VERSION_ID="{version_id}"\nVERSION="{version_id} ({codename})"\n'
        f"VERSION_CODENAME={codename}\nID=debian\n",
    )
    recipe.file("etc/debian_version", f"{point_release}\n")
    recipe.file("etc/hostname", f"{hostname}\n")
    recipe.file("etc/fstab", "/dev/sda / ext4 defaults 0 1\n")
    recipe.file("var/lib/dpkg/status", dpkg_status(packages, removed=("removed-tool",)))
    recipe.directory("tmp")
    recipe.link("bin", "usr/bin")
    recipe.link("lib", "usr/lib")
    return recipe


def build(recipe: Recipe, *, size: str = "64M") -> Path:
    """The recipe's disk as qcow2: from the cache, else built (and cached) now."""
    target = CACHE / f"{recipe.name}-{recipe.digest()}.qcow2"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="guestdisk-", dir=CACHE) as work:
        root = Path(work) / "root"
        _write_tree(root, recipe)
        raw = Path(work) / "disk.raw"
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(raw), size],
            check=True,
            capture_output=True,
        )
        partial = Path(work) / "disk.qcow2"
        subprocess.run(
            ["qemu-img", "convert", "-O", "qcow2", str(raw), str(partial)],
            check=True,
            capture_output=True,
        )
        # Renamed into place whole: a concurrent or interrupted run never sees half a disk.
        partial.rename(target)
    return target


def _write_tree(root: Path, recipe: Recipe) -> None:
    root.mkdir()
    # A real ELF binary: libguestfs reads the guest's architecture from one.
    elf = root / "usr" / "bin" / "ls"
    elf.parent.mkdir(parents=True)
    shutil.copyfile("/bin/ls", elf)
    elf.chmod(0o755)
    for relative, entry in sorted(recipe.entries.items()):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if entry.symlink is not None:
            path.symlink_to(entry.symlink)
        elif entry.directory:
            path.mkdir(exist_ok=True)
            path.chmod(entry.mode)
        else:
            path.write_text(entry.text or "")
            # chmod after writing: the umask must not soften a planted world-writable file.
            os.chmod(path, entry.mode)


# What the planted disk holds, for the tests to compare against.
PLANTED_HOSTNAME = "web-planted"
PLANTED_PACKAGES = {
    "base-files": "10.3+deb10u13",
    "bash": "5.0-4",
    "libc6": "2.28-10+deb10u2",
    "openssh-server": "1:7.9p1-10+deb10u4",
    "auditd": "1:2.8.4-3",
    "legacy-daemon": "0.9-1",  # in no apt list of the guest: obsolete
}
CLEAN_HOSTNAME = "db-clean"
CLEAN_PACKAGES = {
    "base-files": "13.8",
    "bash": "5.2.37-2",
    "libc6": "2.41-12",
    "openssh-server": "1:10.0p1-7",
    "auditd": "1:4.0.2-2",
    "nftables": "1.1.3-1",
}
DISTRO_INFO = (
    "version,codename,series,created,release,eol,eol-lts,eol-elts\n"
    "10,Buster,buster,2017-06-17,2019-07-06,2022-09-10,2024-06-30,2029-06-30\n"
    "11,Bullseye,bullseye,2019-07-06,2021-08-14,2024-08-14,2026-08-31,2031-06-30\n"
    "12,Bookworm,bookworm,2021-08-14,2023-06-10,2026-06-10,2028-06-30,2033-06-30\n"
    "13,Trixie,trixie,2023-06-10,2025-08-09\n"
)
_LIST = "var/lib/apt/lists/deb.debian.org_debian_dists_{}_main_binary-amd64_Packages"
_WANTS = "etc/systemd/system/multi-user.target.wants/{}"


def planted_disk() -> Recipe:
    """Debian 10, every finding planted: root login and passwords over ssh, an empty
    password, a second UID 0, a world-writable file in /etc, no firewall, an obsolete
    package, an ended release, audit logs off, a volatile journal."""
    recipe = debian_root(
        "planted",
        hostname=PLANTED_HOSTNAME,
        version_id="10",
        codename="buster",
        point_release="10.13",
        packages=PLANTED_PACKAGES,
    )
    recipe.file(
        "etc/ssh/sshd_config",
        "# planted: root may log in with a password\nPermitRootLogin yes\n"
        "PasswordAuthentication yes\nUsePAM yes\n",
    )
    recipe.file(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
        "toor:x:0:0:backdoor:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n",
    )
    recipe.file(
        "etc/shadow",
        "root:$6$salt$hash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
        "toor:$6$salt$hash:19000:0:99999:7:::\nalice::19000:0:99999:7:::\n",
        mode=0o640,
    )
    recipe.file("etc/cron.d/backup", "0 3 * * * root /usr/local/bin/backup\n", mode=0o666)
    recipe.file("etc/audit/auditd.conf", "log_file = /var/log/audit/audit.log\nwrite_logs = no\n")
    recipe.file("etc/systemd/journald.conf", "[Journal]\nStorage=volatile\n")
    recipe.file(_LIST.format("buster"), apt_list(sorted(set(PLANTED_PACKAGES) - {"legacy-daemon"})))
    recipe.file("usr/share/distro-info/debian.csv", DISTRO_INFO)
    recipe.link(_WANTS.format("ssh.service"), "/lib/systemd/system/ssh.service")
    recipe.link(_WANTS.format("auditd.service"), "/lib/systemd/system/auditd.service")
    recipe.link("etc/systemd/system/getty@tty1.service", "/dev/null")
    return recipe


def clean_disk() -> Recipe:
    """Debian 13 as a careful operator leaves it: none of the findings apply."""
    recipe = debian_root(
        "clean",
        hostname=CLEAN_HOSTNAME,
        version_id="13",
        codename="trixie",
        point_release="13.2",
        packages=CLEAN_PACKAGES,
    )
    recipe.file("etc/ssh/sshd_config", "PermitRootLogin no\nPasswordAuthentication no\n")
    recipe.file(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
        "bob:x:1000:1000:Bob:/home/bob:/bin/bash\n",
    )
    recipe.file(
        "etc/shadow",
        "root:!:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
        "bob:$6$salt$hash:19000:0:99999:7:::\n",
        mode=0o640,
    )
    recipe.file("etc/nftables.conf", "flush ruleset\ntable inet filter {\n}\n")
    recipe.file("etc/audit/auditd.conf", "log_file = /var/log/audit/audit.log\nwrite_logs = yes\n")
    recipe.file("etc/systemd/journald.conf", "[Journal]\nStorage=persistent\n")
    recipe.directory("var/log/journal")
    recipe.file(_LIST.format("trixie"), apt_list(sorted(CLEAN_PACKAGES)))
    recipe.file("usr/share/distro-info/debian.csv", DISTRO_INFO)
    for unit in ("ssh.service", "auditd.service", "nftables.service"):
        recipe.link(_WANTS.format(unit), f"/lib/systemd/system/{unit}")
    return recipe
