"""guestkit.profile's rules: findings derived only from a guest's own files.

The reader (_guestfs_reader.profile_material) brings the files; everything here
is pure, so each rule reads as what it checks. A finding is
`{"id", "severity", "title", "evidence"}`, one per rule that fires, its evidence
naming the file and what in it gave the finding away.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import posixpath
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any, Literal

Severity = Literal["critical", "high", "medium", "low", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low", "info")
Finding = dict[str, str]
# What the reader brought: files (path -> text), modes, world_writable, directories,
# apt_available, plus the inspection's operating_system, packages and services.
Material = dict[str, Any]


def finding(id_: str, severity: Severity, title: str, evidence: str) -> Finding:
    return {"id": id_, "severity": severity, "title": title, "evidence": evidence}


def sshd_settings(files: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Global sshd settings (lowercased keyword -> (value, where)), the first one
    winning as in sshd, Include files read in place; Match blocks are left out."""
    settings: dict[str, tuple[str, str]] = {}

    def read(path: str, depth: int) -> bool:
        """False once a Match block starts: nothing after it is global."""
        for number, raw in enumerate(files.get(path, "").splitlines(), start=1):
            words = raw.split("#", 1)[0].replace("=", " ", 1).split()
            if len(words) < 2:
                continue
            keyword, value = words[0].lower(), words[1]
            if keyword == "match":
                return False
            if keyword == "include" and depth < 8:
                for pattern in words[1:]:
                    full = pattern if pattern.startswith("/") else f"/etc/ssh/{pattern}"
                    for included in sorted(p for p in files if fnmatch.fnmatch(p, full)):
                        if not read(included, depth + 1):
                            return False
                continue
            settings.setdefault(keyword, (value.lower(), f"{path}:{number}: {raw.strip()}"))
        return True

    read("/etc/ssh/sshd_config", 0)
    return settings


def ssh_rules(material: Material) -> list[Finding]:
    files: dict[str, str] = material["files"]
    if "/etc/ssh/sshd_config" not in files:
        return []  # no OpenSSH server configured
    settings = sshd_settings(files)
    found = []
    root_login, where = settings.get("permitrootlogin", ("prohibit-password", ""))
    # prohibit-password (the default) and its old name without-password allow keys only.
    if root_login == "yes":
        found.append(finding("ssh.root_login", "high", "sshd permits root login", where))
    # OpenSSH's default is yes: an unset PasswordAuthentication allows passwords.
    passwords, where = settings.get(
        "passwordauthentication", ("yes", "/etc/ssh/sshd_config: PasswordAuthentication not set")
    )
    if passwords == "yes":
        found.append(
            finding("ssh.password_authentication", "medium", "sshd accepts passwords", where)
        )
    empty, where = settings.get("permitemptypasswords", ("no", ""))
    if empty == "yes":
        found.append(finding("ssh.empty_passwords", "high", "sshd accepts empty passwords", where))
    return found


def _table(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def account_rules(material: Material) -> list[Finding]:
    files: dict[str, str] = material["files"]
    found = []
    empty = [row[0] for row in _table(files.get("/etc/shadow", "")) if len(row) > 1 and not row[1]]
    if empty:
        evidence = "/etc/shadow: empty password field for " + ", ".join(empty)
        found.append(
            finding("accounts.empty_password", "high", "accounts without password", evidence)
        )
    uid0 = [
        row[0]
        for row in _table(files.get("/etc/passwd", ""))
        if len(row) > 2 and row[2] == "0" and row[0] != "root"
    ]
    if uid0:
        evidence = "/etc/passwd: UID 0 for " + ", ".join(uid0)
        found.append(
            finding("accounts.extra_uid0", "high", "accounts with UID 0 besides root", evidence)
        )
    return found


def file_rules(material: Material) -> list[Finding]:
    found = []
    writable: list[str] = material["world_writable"]
    if writable:
        evidence = "world-writable: " + ", ".join(writable)
        found.append(
            finding(
                "files.world_writable_etc", "medium", "world-writable files under /etc", evidence
            )
        )
    shadow_mode = material["modes"].get("/etc/shadow")
    if shadow_mode is not None and shadow_mode & 0o004:
        evidence = f"/etc/shadow mode {shadow_mode:04o}"
        found.append(
            finding("files.shadow_readable", "high", "/etc/shadow readable by anyone", evidence)
        )
    return found


def _enabled(material: Material, unit: str) -> bool:
    return any(s["name"] == unit and s["state"] == "enabled" for s in material["services"])


def firewall_rules(material: Material) -> list[Finding]:
    files: dict[str, str] = material["files"]
    ufw = files.get("/etc/ufw/ufw.conf", "")
    # A ruleset file alone is not a firewall: Debian ships /etc/nftables.conf accepting
    # everything, and it only applies when its service is enabled.
    configured = (
        ("/etc/nftables.conf" in files and _enabled(material, "nftables.service"))
        or (
            "/etc/iptables/rules.v4" in files and _enabled(material, "netfilter-persistent.service")
        )
        or any(line.replace(" ", "").lower() == "enabled=yes" for line in ufw.splitlines())
        or ("/etc/firewalld/firewalld.conf" in files and _enabled(material, "firewalld.service"))
    )
    if configured:
        return []
    evidence = "no enabled nftables, netfilter-persistent, ufw or firewalld configuration"
    return [finding("firewall.absent", "medium", "no firewall configuration", evidence)]


def package_rules(material: Material) -> list[Finding]:
    available: list[str] | None = material["apt_available"]
    if available is None:
        return []  # the guest keeps no package lists: nothing to compare with
    obsolete = sorted(set(material["packages"]) - set(available))
    if not obsolete:
        return []
    evidence = "installed but in none of the guest's apt lists: " + ", ".join(obsolete)
    return [finding("packages.obsolete", "low", "obsolete packages", evidence)]


def release_rules(material: Material, today: date) -> list[Finding]:
    """The guest's release is past its end of life by the guest's own distro-info-data."""
    system = material["operating_system"]
    table = material["files"].get(f"/usr/share/distro-info/{system['distribution']}.csv")
    if table is None:
        return []
    major = str(system["version"]).split(".")[0]
    for row in csv.DictReader(io.StringIO(table)):
        if row.get("version", "").split(" ")[0] != major:
            continue
        # LTS still brings security updates; past its end (or past eol without one) none come.
        last = row.get("eol-lts") or row.get("eol")
        if last and date.fromisoformat(last) < today:
            evidence = f"{system['distribution']}.csv: {row['series']} support ended {last}"
            return [
                finding(
                    "release.end_of_life", "high", "release no longer receives updates", evidence
                )
            ]
    return []


def audit_rules(material: Material) -> list[Finding]:
    conf = material["files"].get("/etc/audit/auditd.conf")
    if conf is None:
        evidence = "no /etc/audit/auditd.conf"
        return [finding("audit.not_configured", "medium", "auditd is not installed", evidence)]
    for number, line in enumerate(conf.splitlines(), start=1):
        key, _, value = line.partition("=")
        if key.strip() == "write_logs" and value.strip().lower() == "no":
            evidence = f"/etc/audit/auditd.conf:{number}: {line.strip()}"
            return [
                finding("audit.logs_disabled", "medium", "audit records are not written", evidence)
            ]
    return []


def journald_rules(material: Material) -> list[Finding]:
    files: dict[str, str] = material["files"]
    storage, where = "auto", "default Storage=auto"
    drop_ins = sorted(p for p in files if posixpath.dirname(p) == "/etc/systemd/journald.conf.d")
    # Later files override earlier ones, drop-ins the main file.
    for path in ["/etc/systemd/journald.conf", *drop_ins]:
        for number, line in enumerate(files.get(path, "").splitlines(), start=1):
            key, _, value = line.partition("=")
            if key.strip() == "Storage":
                storage, where = value.strip().lower(), f"{path}:{number}: {line.strip()}"
    persistent = storage == "persistent" or (
        storage == "auto" and "/var/log/journal" in material["directories"]
    )
    if persistent:
        return []
    if storage == "auto":
        where += " and no /var/log/journal"
    return [
        finding("journald.not_persistent", "low", "the journal is not kept across boots", where)
    ]


Rule = Callable[[Material], list[Finding]]
PROFILES: dict[str, tuple[Rule, ...]] = {
    "security": (ssh_rules, account_rules, file_rules, firewall_rules),
    "compliance": (package_rules, audit_rules, journald_rules),
}


def evaluate(material: Material, profiles: Sequence[str], *, today: date) -> dict[str, Any]:
    """Findings of the chosen profiles, with a summary counted by severity."""
    found: list[Finding] = []
    for name in profiles:
        for rule in PROFILES[name]:
            found += rule(material)
        if name == "compliance":
            found += release_rules(material, today)
    counts: dict[str, int] = dict.fromkeys(SEVERITIES, 0)
    for item in found:
        counts[item["severity"]] += 1
    return {"findings": found, "summary": {"total": len(found), "by_severity": counts}}
