"""Read a guest disk with libguestfs; run as a script, never imported by the agent.

Debian's libguestfs binding (python3-guestfs) exists only for the system Python,
which need not be the agent's, and an appliance is a qemu child that must die
with the job. So the agent runs this file with the system Python in a process
group of its own (JobContext.run_process) and reads JSON lines from its stdout:
`{"stage": ...}` as each step begins, then one `{"result": ...}` or
`{"error": ..., "reason": ...}`. Standard library and guestfs only, on purpose.

The request (argv[1], JSON): disk, format, tmpdir, tcg (bool) and `want`, any of
packages, services, filesystems, profile.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

import guestfs  # type: ignore[import-not-found]  # the system Python's binding, no stubs

# Larger guest files are not configuration: a profile never needs them whole.
MAX_FILE_BYTES = 1024 * 1024
PROFILE_FILES = (
    "/etc/ssh/sshd_config",
    "/etc/passwd",
    "/etc/shadow",
    "/etc/nftables.conf",
    "/etc/iptables/rules.v4",
    "/etc/ufw/ufw.conf",
    "/etc/firewalld/firewalld.conf",
    "/etc/audit/auditd.conf",
    "/etc/systemd/journald.conf",
    "/usr/share/distro-info/debian.csv",
    "/usr/share/distro-info/ubuntu.csv",
)
PROFILE_GLOBS = ("/etc/ssh/sshd_config.d/*", "/etc/systemd/journald.conf.d/*.conf")
SYSTEMD_UNITS = "/etc/systemd/system"
# As root, libguestfs puts its sockets in /tmp/libguestfsXXXXXX whatever the environment
# says; qemu's command line, logged before qemu starts, names the directory.
SOCKET_PATH = re.compile(r"path=(/[^,\s]*/libguestfs[A-Za-z0-9]{6})/guestfsd\.sock")


def emit(**record: Any) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def main() -> int:
    request = json.loads(sys.argv[1])
    g = guestfs.GuestFS(python_return_dict=True)
    # Per-job scratch, so the agent removes whatever a killed appliance leaves behind.
    g.set_tmpdir(request["tmpdir"])
    report_socket_directory(g)
    g.set_backend("direct")
    if request["tcg"]:
        g.set_backend_settings(["force_tcg"])
        g.set_hv(split_wx_qemu(g.get_hv(), request["tmpdir"]))
    # readonly: libguestfs puts a throwaway overlay in front of the disk, so a running
    # VM's disk is neither written nor (with the overlay's shared open) locked.
    g.add_drive_opts(request["disk"], readonly=True, format=request["format"])
    emit(stage="launch")
    g.launch()
    emit(stage="inspect")
    roots = g.inspect_os()
    if not roots:
        emit(error="no operating system found on the disk", reason="no_os")
        return 2
    root = roots[0]
    result: dict[str, Any] = {"operating_system": operating_system(g, root)}
    emit(stage="mount")
    mount_guest(g, root)
    want = set(request["want"])
    if "packages" in want or "profile" in want:
        emit(stage="packages")
        result["packages"] = sorted(app["app2_name"] for app in g.inspect_list_applications2(root))
    if "services" in want or "profile" in want:
        emit(stage="services")
        result["services"] = services(g)
    if "filesystems" in want:
        emit(stage="filesystems")
        result["filesystems"] = filesystems(g, root)
    if "profile" in want:
        emit(stage="profile")
        result["profile"] = profile_material(g)
    g.umount_all()
    g.shutdown()
    g.close()
    emit(result=result)
    return 0


# qemu's TCG writes code it then runs. Its default JIT buffer is one mapping made
# writable and executable (mprotect RWX), which the shipped unit's
# MemoryDenyWriteExecute= refuses ("mprotect of jit buffer: Operation not permitted").
# With split-wx the buffer is mapped twice (a writable view and an executable one):
# never both at once. libguestfs asks for TCG with `-machine accel=...`, which qemu
# will not combine with `-accel tcg,split-wx=on`: this wrapper swaps one for the other.
_SPLIT_WX = """#!{python}
import os, sys
args, accel = [], False
argv = sys.argv[1:]
for index, arg in enumerate(argv):
    if index and argv[index - 1] == "-machine":
        kept = [item for item in arg.split(",") if not item.startswith("accel=")]
        accel = accel or len(kept) < len(arg.split(","))
        if not kept:
            args.pop()  # "-machine accel=tcg" alone: drop both
            continue
        arg = ",".join(kept)
    args.append(arg)
if accel:
    args += ["-accel", "tcg,split-wx=on"]
os.execv({qemu!r}, [{qemu!r}, *args])
"""


def split_wx_qemu(qemu: str, directory: str) -> str:
    """A qemu for libguestfs that runs TCG with split W^X mappings (see _SPLIT_WX)."""
    path = os.path.join(directory, "qemu-split-wx")
    with open(path, "w") as script:
        script.write(_SPLIT_WX.format(python=sys.executable, qemu=qemu))
    os.chmod(path, 0o700)
    return path


def report_socket_directory(g: Any) -> None:
    """Tell the agent where the sockets go, so it removes them if the job is killed.

    The launch's debug messages carry qemu's command line; a callback takes them
    (and the appliance's console) instead of stderr, keeping only the last lines.
    """
    tail: list[str] = []

    def on_message(_event: int, _handle: int, buffer: bytes, _array: Any) -> None:
        text = buffer.decode(errors="replace") if isinstance(buffer, bytes) else str(buffer)
        for found in SOCKET_PATH.finditer(text):
            emit(sockdir=found.group(1))
        tail[:] = [*tail, text][-20:]

    g.set_verbose(True)
    g.set_event_callback(on_message, guestfs.EVENT_LIBRARY | guestfs.EVENT_APPLIANCE)
    TAILS.append(tail)


# Debug lines kept for the error report if anything fails.
TAILS: list[list[str]] = []


def operating_system(g: Any, root: str) -> dict[str, Any]:
    major, minor = g.inspect_get_major_version(root), g.inspect_get_minor_version(root)
    return {
        "type": g.inspect_get_type(root),
        "distribution": g.inspect_get_distro(root),
        "product_name": g.inspect_get_product_name(root),
        "version": f"{major}.{minor}",
        "hostname": g.inspect_get_hostname(root),
        "arch": g.inspect_get_arch(root),
        "package_format": g.inspect_get_package_format(root),
        "package_management": g.inspect_get_package_management(root),
    }


def mount_guest(g: Any, root: str) -> None:
    # Shortest mountpoint first: / before /usr before /usr/local.
    for mountpoint, device in sorted(
        g.inspect_get_mountpoints(root).items(), key=lambda m: len(m[0])
    ):
        try:
            g.mount_ro(device, mountpoint)
        except RuntimeError as exc:  # one bad filesystem (e.g. an fstab typo) is not fatal
            sys.stderr.write(f"cannot mount {device} on {mountpoint}: {exc}\n")


def services(g: Any) -> list[dict[str, str]]:
    """systemd units enabled (linked into a target's .wants) or masked (linked to /dev/null)."""
    found: list[dict[str, str]] = []
    if not g.is_dir(SYSTEMD_UNITS):
        return found
    for name in sorted(g.ls(SYSTEMD_UNITS)):
        path = f"{SYSTEMD_UNITS}/{name}"
        if name.endswith(".wants") and g.is_dir(path):
            target = name.removesuffix(".wants")
            found += [
                {"name": unit, "state": "enabled", "target": target} for unit in sorted(g.ls(path))
            ]
        elif g.is_symlink(path) and g.readlink(path) == "/dev/null":
            found.append({"name": name, "state": "masked"})
    return found


def filesystems(g: Any, root: str) -> list[dict[str, Any]]:
    mounted_on = {
        device: mountpoint for mountpoint, device in g.inspect_get_mountpoints(root).items()
    }
    return [
        {
            "device": device,
            "type": kind,
            "size": g.blockdev_getsize64(device) if kind != "unknown" else None,
            "mountpoint": mounted_on.get(device),
        }
        for device, kind in sorted(g.list_filesystems().items())
    ]


def read_text(g: Any, path: str) -> str | None:
    if not g.is_file(path, followsymlinks=True) or g.filesize(path) > MAX_FILE_BYTES:
        return None
    return bytes(g.read_file(path)).decode("utf-8", errors="replace")


def profile_material(g: Any) -> dict[str, Any]:
    """The guest's own files that the findings are derived from (agent.handlers._findings)."""
    paths = list(PROFILE_FILES)
    for pattern in PROFILE_GLOBS:
        paths += sorted(g.glob_expand(pattern))
    files = {path: read_text(g, path) for path in paths}
    modes = {
        path: g.lstatns(path)["st_mode"] & 0o7777 for path in ("/etc/shadow",) if g.exists(path)
    }
    return {
        "files": {path: text for path, text in files.items() if text is not None},
        "modes": modes,
        "world_writable": world_writable(g, "/etc"),
        "directories": [path for path in ("/var/log/journal",) if g.is_dir(path)],
        "apt_available": apt_available(g),
    }


def world_writable(g: Any, top: str) -> list[str]:
    """Files and directories under `top` anyone may write (symlinks do not count)."""
    if not g.is_dir(top):
        return []
    by_directory: dict[str, list[str]] = {}
    for relative in g.find(top):
        # find answers paths relative to `top`, each with a leading slash.
        parent, _, name = f"{top}/{relative.lstrip('/')}".rpartition("/")
        by_directory.setdefault(parent, []).append(name)
    found = []
    # One call per directory rather than per file: each call is a round trip to the appliance.
    for parent, names in by_directory.items():
        for name, stat in zip(names, g.lstatnslist(parent, names), strict=True):
            mode = stat["st_mode"]
            is_symlink = mode & 0o170000 == 0o120000
            if mode & 0o002 and not is_symlink:
                found.append(f"{parent}/{name}")
    return sorted(found)


def apt_available(g: Any) -> list[str] | None:
    """Package names the guest's apt repositories offer; None when it has no lists."""
    lists = g.glob_expand("/var/lib/apt/lists/*_Packages")
    if not lists:
        return None
    names: set[str] = set()
    for path in lists:
        names.update(line.removeprefix("Package: ").strip() for line in g.grep("^Package: ", path))
    return sorted(names)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as exc:  # libguestfs reports every failure as RuntimeError
        for tail in TAILS:
            sys.stderr.write("".join(tail))
        emit(error=str(exc), reason="libguestfs")
        sys.exit(3)
