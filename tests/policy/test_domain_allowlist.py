"""Issue 20: domain and network XML against an allowlist, pools without links.

A definition from anyone but an admin on a host that allows passthrough may
hold only what vm.define's and network.define's own specs generate. Each
hostile shape the attack used (and its neighbours) is refused with the field,
the element's path and the attribute; the specs' own XML, for any spec, passes;
admin + policy.allow_passthrough takes the rest. Pool directories are walked
without following a link, and a pool on a link never widens the image roots.
"""

from __future__ import annotations

import operator
import os
import string
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import Config, PolicyConfig
from agent.core.intake import admit_now
from agent.errors import ForbiddenError
from agent.handlers.domain_xml import VmSpec, spec_to_xml
from agent.handlers.network import NetworkDefinePayload, network_xml
from agent.handlers.storage_roots import check_pool_directory, pool_roots, refresh_pool_roots
from agent.policy.domain import (
    NETWORK_ALLOWLIST,
    check_domain_xml,
    disk_files,
)
from agent.policy.paths import Policy
from agent.policy.xml_allowlist import check_xml
from agent.service.daemon import Agent
from agent.transports.spool.settings import SpoolConfig
from tests.jobs import failed, job_document, ok

SECRET = b"allowlist-secret-41d9"
FIELD = "payload.data.xml"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
DNSMASQ_NS = "http://libvirt.org/schemas/network/dnsmasq/1.0"


@dataclass
class Host:
    root: Path  # the one image root (the test config's)
    outside: Path  # beside it, holding the secret
    secret: Path


@pytest.fixture
def config(config: Config) -> Config:
    return config.model_copy(update={"spool": SpoolConfig(enabled=False)})


@pytest.fixture
def host(tmp_path: Path, config: Config) -> Host:
    root, outside = tmp_path / "images", tmp_path / "outside"
    assert config.policy.image_roots == [root]
    root.mkdir()
    outside.mkdir()
    secret = outside / "secret.raw"
    secret.write_bytes(SECRET * 100)
    qemu_img = ("qemu-img", "create", "-q", "-f", "qcow2")
    subprocess.run([*qemu_img, str(root / "good.qcow2"), "1M"], check=True)
    (root / "good.raw").write_bytes(b"\0" * 65536)
    (root / "link.raw").symlink_to(secret)
    (root / "linkdir").symlink_to(outside)
    (root / "plain").write_bytes(b"")
    subprocess.run(
        [*qemu_img, "-F", "raw", "-b", str(secret), str(root / "backed.qcow2"), "1M"], check=True
    )
    data_file = f"data_file={outside / 'data.raw'}"
    subprocess.run([*qemu_img, "-o", data_file, str(root / "datafile.qcow2"), "1M"], check=True)
    return Host(root, outside, secret)


@pytest.fixture
def policy(config: Config, host: Host) -> Policy:
    return Policy(config)


def _domain(devices: str = "", *, extra: str = "", after: str = "", ns: str = "") -> str:
    return (
        f"<domain type='kvm'{ns}><name>evil</name><memory unit='MiB'>64</memory>"
        f"<os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>{extra}"
        f"<devices>{devices}</devices>{after}</domain>"
    )


def _disk(path: str | Path, fmt: str = "raw", extra: str = "") -> str:
    return (
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
        f"<source file='{path}'/><target dev='vda' bus='virtio'/>{extra}</disk>"
    )


# id -> (the XML for a host, the element named, the attribute named)
DomainCase = tuple[Callable[[Host], str], str, str | None]
HOSTILE_DOMAINS: dict[str, DomainCase] = {
    "second-devices-with-hostdev": (
        lambda h: _domain(
            _disk(h.root / "good.raw"),
            after="<devices><hostdev mode='subsystem' type='pci'><source>"
            "<address domain='0' bus='0' slot='1' function='0'/></source></hostdev></devices>",
        ),
        "/domain/devices[2]",
        None,
    ),
    "hostdev-in-the-first-of-two-devices": (
        lambda h: _domain("<hostdev mode='subsystem' type='pci'/>", after="<devices></devices>"),
        "/domain/devices[1]/hostdev",
        None,
    ),
    "filesystem-host-root": (
        lambda h: _domain(
            "<filesystem type='mount' accessmode='passthrough'>"
            "<source dir='/'/><target dir='root'/></filesystem>"
        ),
        "/domain/devices/filesystem",
        None,
    ),
    "seclabel-static-root": (
        lambda h: _domain(
            extra="<seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>"
        ),
        "/domain/seclabel",
        None,
    ),
    "seclabel-none": (lambda h: _domain(extra="<seclabel type='none'/>"), "/domain/seclabel", None),
    "input-passthrough": (
        lambda h: _domain(
            "<input type='passthrough' bus='virtio'><source evdev='/dev/input/event0'/></input>"
        ),
        "/domain/devices/input",
        None,
    ),
    "input-evdev": (
        lambda h: _domain("<input type='evdev'><source dev='/dev/input/event1'/></input>"),
        "/domain/devices/input",
        None,
    ),
    "rng-egd-host-socket": (
        lambda h: _domain(
            "<rng model='virtio'><backend model='egd' type='unix'>"
            "<source mode='connect' path='/run/egd.sock'/></backend></rng>"
        ),
        "/domain/devices/rng",
        None,
    ),
    "vnc-socket-attribute": (
        lambda h: _domain("<graphics type='vnc' socket='/run/evil.sock'/>"),
        "/domain/devices/graphics",
        "socket",
    ),
    "vnc-listen-socket": (
        lambda h: _domain(
            "<graphics type='vnc'><listen type='socket' socket='/run/evil.sock'/></graphics>"
        ),
        "/domain/devices/graphics/listen",
        "type",
    ),
    "vnc-on-every-address": (
        lambda h: _domain("<graphics type='vnc' port='5901' listen='0.0.0.0'/>"),
        "/domain/devices/graphics",
        "listen",
    ),
    "spice-gl-host-render-node": (
        lambda h: _domain(
            "<graphics type='spice'><gl enable='yes' rendernode='/dev/dri/renderD128'/></graphics>"
        ),
        "/domain/devices/graphics/gl",
        None,
    ),
    "graphics-sdl": (
        lambda h: _domain("<graphics type='sdl'/>"),
        "/domain/devices/graphics",
        "type",
    ),
    "serial-host-file": (
        lambda h: _domain("<serial type='file'><source path='/etc/cron.d/evil'/></serial>"),
        "/domain/devices/serial",
        None,
    ),
    "serial-host-socket": (
        lambda h: _domain("<serial type='unix'><source mode='bind' path='/run/evil'/></serial>"),
        "/domain/devices/serial",
        None,
    ),
    "channel-host-socket": (
        lambda h: _domain(
            "<channel type='unix'><source mode='bind' path='/var/lib/evil.sock'/>"
            "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
        ),
        "/domain/devices/channel",
        None,
    ),
    "console-log-file": (
        lambda h: _domain("<console type='pty'><log file='/etc/cron.d/evil'/></console>"),
        "/domain/devices/console",
        None,
    ),
    "qemu-commandline": (
        lambda h: _domain(
            extra="<qemu:commandline><qemu:arg value='-evil'/></qemu:commandline>",
            ns=f" xmlns:qemu='{QEMU_NS}'",
        ),
        "/domain",
        "xmlns:qemu",
    ),
    "qemu-commandline-declared-inside": (
        lambda h: _domain(
            extra=f"<qemu:commandline xmlns:qemu='{QEMU_NS}'><qemu:arg value='-evil'/>"
            "</qemu:commandline>"
        ),
        "/domain/qemu:commandline",
        None,
    ),
    "qemu-namespace-declared-only": (
        lambda h: _domain(ns=f" xmlns:qemu='{QEMU_NS}'"),
        "/domain",
        "xmlns:qemu",
    ),
    "emulator": (
        lambda h: _domain("<emulator>/tmp/evil</emulator>"),
        "/domain/devices/emulator",
        None,
    ),
    "kernel": (
        lambda h: _domain().replace("<boot dev='hd'/>", "<kernel>/etc/shadow</kernel>"),
        "/domain/os/kernel",
        None,
    ),
    "memory-backed-by-a-file": (
        lambda h: _domain(extra="<memoryBacking><source type='file'/></memoryBacking>"),
        "/domain/memoryBacking",
        None,
    ),
    "vcpu-pinned-to-host-cpus": (
        lambda h: _domain().replace("</os>", "</os><vcpu cpuset='0'>1</vcpu>"),
        "/domain/vcpu",
        "cpuset",
    ),
    "disk-outside-the-roots": (
        lambda h: _domain(_disk(h.secret)),
        "/domain/devices/disk/source",
        "file",
    ),
    "disk-etc-shadow": (
        lambda h: _domain(_disk("/etc/shadow")),
        "/domain/devices/disk/source",
        "file",
    ),
    "disk-symlink-in-the-root": (
        lambda h: _domain(_disk(h.root / "link.raw")),
        "/domain/devices/disk/source",
        "file",
    ),
    "disk-through-a-linked-directory": (
        lambda h: _domain(_disk(h.root / "linkdir" / "secret.raw")),
        "/domain/devices/disk/source",
        "file",
    ),
    "disk-dotdot": (
        lambda h: _domain(_disk(f"{h.root}/../outside/secret.raw")),
        "/domain/devices/disk/source",
        "file",
    ),
    "disk-in-a-second-devices": (
        lambda h: _domain(
            _disk(h.root / "good.raw"), after=f"<devices>{_disk(h.secret)}</devices>"
        ),
        "/domain/devices[2]",
        None,
    ),
    "disk-block-device": (
        lambda h: _domain("<disk type='block' device='disk'><source dev='/dev/sda'/></disk>"),
        "/domain/devices/disk",
        "type",
    ),
    "disk-network-nbd": (
        lambda h: _domain(
            "<disk type='network'><source protocol='nbd' name='x'><host name='h'/></source></disk>"
        ),
        "/domain/devices/disk",
        "type",
    ),
    "disk-explicit-backing-store": (
        lambda h: _domain(
            _disk(
                h.root / "good.qcow2",
                "qcow2",
                "<backingStore type='file'><format type='raw'/>"
                "<source file='/etc/shadow'/></backingStore>",
            )
        ),
        "/domain/devices/disk/backingStore",
        None,
    ),
    "disk-format-vmdk": (
        lambda h: _domain(_disk(h.root / "good.raw", "vmdk")),
        "/domain/devices/disk/driver",
        "type",
    ),
    "interface-ethernet-script": (
        lambda h: _domain("<interface type='ethernet'><script path='/tmp/evil.sh'/></interface>"),
        "/domain/devices/interface",
        "type",
    ),
    "interface-direct-on-a-host-nic": (
        lambda h: _domain("<interface type='direct'><source dev='eth0' mode='vepa'/></interface>"),
        "/domain/devices/interface",
        "type",
    ),
    "text-where-none-belongs": (
        lambda h: _domain().replace("<devices>", "<devices>junk"),
        "/domain/devices",
        None,
    ),
    "doctype-default-attribute": (
        # libvirt applies a DTD's default attributes: this would listen everywhere.
        lambda h: (
            "<!DOCTYPE domain [<!ATTLIST graphics listen CDATA '0.0.0.0'>]>"
            + _domain("<graphics type='vnc'/>")
        ),
        "<!DOCTYPE domain>",
        None,
    ),
    "doctype-entity": (
        lambda h: f"<!DOCTYPE domain [<!ENTITY f '{h.secret}'>]>" + _domain(_disk("&f;")),
        "<!DOCTYPE domain>",
        None,
    ),
    "a-second-name": (
        lambda h: _domain().replace("</name>", "</name><name>other</name>"),
        "/domain/name[2]",
        None,
    ),
}
# File disks stay under the roots for everyone, admins with passthrough included.
FILE_DISK_CASES = {
    "disk-outside-the-roots",
    "disk-etc-shadow",
    "disk-symlink-in-the-root",
    "disk-through-a-linked-directory",
    "disk-dotdot",
    "disk-in-a-second-devices",
    "doctype-entity",  # the entity names the secret
}


def _refusal(policy: Policy, xml: str, *, privileged: bool = False) -> ForbiddenError:
    with pytest.raises(ForbiddenError) as caught:
        check_domain_xml(policy, xml, field=FIELD, privileged=privileged)
    return caught.value


@pytest.mark.parametrize("case", sorted(HOSTILE_DOMAINS))
def test_hostile_domain_xml_is_refused_naming_the_element_and_attribute(
    policy: Policy, host: Host, case: str
) -> None:
    build, element, attribute = HOSTILE_DOMAINS[case]
    error = _refusal(policy, build(host))
    expected = {"field": FIELD, "element": element}
    if attribute is not None:
        expected["attribute"] = attribute
    named = ("field", "element", "attribute")
    assert {key: error.details[key] for key in named if key in error.details} == expected
    assert error.message.startswith(f"{FIELD}: {element}")
    assert "policy.allow_passthrough" in error.details["reason"]
    assert SECRET.decode() not in error.message


@pytest.mark.parametrize(
    ("privileged", "allow_passthrough"), [(False, False), (True, False), (False, True)]
)
def test_an_admin_token_or_the_config_alone_is_not_enough(
    config: Config, host: Host, privileged: bool, allow_passthrough: bool
) -> None:
    policy = Policy(
        config.model_copy(
            update={
                "policy": PolicyConfig(image_roots=[host.root], allow_passthrough=allow_passthrough)
            }
        )
    )
    for case, (build, element, _) in HOSTILE_DOMAINS.items():
        error = _refusal(policy, build(host), privileged=privileged)
        assert error.details["element"] == element, case


def test_admin_with_allow_passthrough_takes_anything_but_file_disks_outside_the_roots(
    config: Config, host: Host
) -> None:
    policy = Policy(
        config.model_copy(
            update={"policy": PolicyConfig(image_roots=[host.root], allow_passthrough=True)}
        )
    )
    for case, (build, _, _) in HOSTILE_DOMAINS.items():
        if case in FILE_DISK_CASES:
            error = _refusal(policy, build(host), privileged=True)
            assert error.details["attribute"] == "file", case
        else:
            check_domain_xml(policy, build(host), field=FIELD, privileged=True)


def test_a_disk_on_a_host_file_in_a_second_devices_is_refused_for_admins_too(
    config: Config, host: Host
) -> None:
    policy = Policy(
        config.model_copy(
            update={"policy": PolicyConfig(image_roots=[host.root], allow_passthrough=True)}
        )
    )
    xml = _domain(_disk(host.root / "good.raw"), after=f"<devices>{_disk(host.secret)}</devices>")
    error = _refusal(policy, xml, privileged=True)
    assert error.details["element"] == "/domain/devices[2]/disk/source"
    assert "outside the image roots" in error.details["reason"]


def test_a_long_refused_value_is_cut_short_in_the_error(policy: Policy) -> None:
    error = _refusal(policy, _domain(f"<graphics type='vnc' listen='{'9' * 100_000}'/>"))
    assert error.details["attribute"] == "listen"
    assert len(error.message) < 400


def test_what_the_allowlist_describes_passes(policy: Policy, host: Host) -> None:
    nics = (
        "<interface type='network'><source network='default'/><model type='virtio'/>"
        "<mac address='52:54:00:00:00:01'/></interface>"
        "<interface type='bridge'><source bridge='br0'/></interface>"
    )
    cdrom = (
        f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
        f"<source file='{host.root}/new.iso'/><target dev='sda' bus='sata'/><readonly/></disk>"
    )
    graphics = (
        "<graphics type='spice' autoport='no' port='5930'>"
        "<listen type='address' address='::1'/></graphics>"
    )
    xml = _domain(
        _disk(host.root / "good.qcow2", "qcow2") + cdrom + nics + graphics,
        extra="<features><acpi/></features>",
    ).replace("<name>", f"<uuid>{uuid.uuid4()}</uuid><name>")
    check_domain_xml(policy, xml, field=FIELD, privileged=False)
    assert disk_files(xml) == [
        (f"{host.root}/good.qcow2", "qcow2"),
        (f"{host.root}/new.iso", "raw"),
    ]


# -- vm.define's own XML, for any spec --

_ALNUM = string.ascii_letters + string.digits


def _word(first: str, rest: str, longest: int) -> st.SearchStrategy[str]:
    # Built from characters (hypothesis' from_regex is ~50x slower); VmSpec then
    # checks each against the pattern the allowlist uses.
    return st.builds(operator.add, st.sampled_from(first), st.text(rest, max_size=longest))


_names = _word(_ALNUM, _ALNUM + "._+-", 63)
_words = _word(_ALNUM + "_", _ALNUM + "_.-", 63)
_bridges = st.text(_ALNUM + "_.-", min_size=1, max_size=15)
_macs = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(
    lambda octets: ":".join(f"{octet:02x}" for octet in octets)
)
_disk_specs = st.fixed_dictionaries(
    {
        "path": st.sampled_from(["good.qcow2", "good.raw"])
        | st.builds(operator.add, _word(_ALNUM, _ALNUM + "_.-", 20), st.just(".raw")),
        "format": st.sampled_from(["qcow2", "raw"]),
        "device": st.sampled_from(["disk", "cdrom"]),
        "bus": st.sampled_from(["virtio", "sata", "scsi", "ide"]),
        "readonly": st.booleans(),
    }
)
_nic_specs = st.one_of(
    st.fixed_dictionaries({"network": _names, "model": _words, "mac": st.none() | _macs}),
    st.fixed_dictionaries({"bridge": _bridges, "model": _words, "mac": st.none() | _macs}),
)
_vm_specs = st.fixed_dictionaries(
    {
        "name": _names,
        "memory_mib": st.integers(16, 16 * 1024 * 1024),
        "vcpus": st.integers(1, 1024),
        "disks": st.lists(_disk_specs, max_size=6),
        "networks": st.lists(_nic_specs, max_size=4),
        "domain_type": st.none() | _words,
        "arch": st.none() | _words,
        "machine": st.none() | _words,
        "graphics": st.sampled_from(["vnc", "none"]),
        "autostart": st.booleans(),
    }
)


@pytest.mark.slow
@settings(
    max_examples=60,
    deadline=None,
    # The fixtures' files are only read: one host for every example is fine.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=_vm_specs)
def test_vm_defines_own_xml_passes_for_any_spec(policy: Policy, host: Host, data: Any) -> None:
    data["disks"] = [{**disk, "path": f"{host.root}/{disk['path']}"} for disk in data["disks"]]
    spec = VmSpec.model_validate(data)
    xml = spec_to_xml(spec, spec.domain_type or "kvm", spec.arch)
    check_domain_xml(policy, xml, field=FIELD, privileged=False)
    assert [path for path, _ in disk_files(xml)] == [disk.path for disk in spec.disks]


def test_thirty_disks_are_named_past_z_as_libvirt_names_them() -> None:
    spec = VmSpec(name="many", memory_mib=64, disks=[{"path": f"/i/{n}.raw"} for n in range(30)])
    xml = spec_to_xml(spec, "kvm", None)
    targets = [f'dev="vd{letters}"' for letters in ("z", "aa", "ad")]
    assert [target in xml for target in targets] == [True, True, True]


# -- networks --

HOSTILE_NETWORKS: dict[str, tuple[str, str, str | None]] = {
    "tftp-host-root": (
        "<network><name>n</name><ip address='10.0.0.1' prefix='24'><tftp root='/'/>"
        "<dhcp><range start='10.0.0.2' end='10.0.0.9'/></dhcp></ip></network>",
        "/network/ip/tftp",
        None,
    ),
    "dhcp-bootp-file": (
        "<network><name>n</name><ip address='10.0.0.1' prefix='24'><dhcp>"
        "<bootp file='/etc/shadow'/></dhcp></ip></network>",
        "/network/ip/dhcp/bootp",
        None,
    ),
    "dnsmasq-options": (
        f"<network xmlns:dnsmasq='{DNSMASQ_NS}'><name>n</name><dnsmasq:options>"
        "<dnsmasq:option value='dhcp-script=/tmp/evil'/></dnsmasq:options></network>",
        "/network",
        "xmlns:dnsmasq",
    ),
    "forward-through-a-host-nic": (
        "<network><name>n</name><forward mode='nat' dev='eth0'/></network>",
        "/network/forward",
        "dev",
    ),
    "forward-interface-list": (
        "<network><name>n</name><forward mode='route'><interface dev='eth0'/></forward></network>",
        "/network/forward/interface",
        None,
    ),
    "forward-hostdev": (
        "<network><name>n</name><forward mode='hostdev' managed='yes'/></network>",
        "/network/forward",
        "mode",
    ),
    "forward-bridge": (
        "<network><name>n</name><forward mode='bridge'/><bridge name='br0'/></network>",
        "/network/forward",
        "mode",
    ),
    "dns-forwarder": (
        "<network><name>n</name><dns><forwarder addr='203.0.113.9'/></dns></network>",
        "/network/dns",
        None,
    ),
    "second-ip": (
        "<network><name>n</name><ip address='10.0.0.1' prefix='24'/>"
        "<ip address='10.0.1.1' prefix='24'/></network>",
        "/network/ip[2]",
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_NETWORKS))
def test_hostile_network_xml_is_refused_naming_the_element(case: str) -> None:
    xml, element, attribute = HOSTILE_NETWORKS[case]
    with pytest.raises(ForbiddenError) as caught:
        check_xml(xml, NETWORK_ALLOWLIST, field=FIELD, needs="admin")
    assert caught.value.details["element"] == element
    assert caught.value.details.get("attribute") == attribute


_network_specs = st.fixed_dictionaries(
    {
        "name": _names,
        "forward": st.sampled_from(["nat", "route", "isolated"]),
        "bridge": st.none() | _bridges,
        "ipv4_address": st.none()
        | st.builds(lambda ip, prefix: f"{ip}/{prefix}", st.ip_addresses(v=4), st.integers(0, 32)),
        "dhcp": st.booleans(),
    }
)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(data=_network_specs, identity=st.none() | st.uuids())
def test_network_defines_own_xml_passes_for_any_spec(data: Any, identity: uuid.UUID | None) -> None:
    spec = NetworkDefinePayload.model_validate(data)
    xml = network_xml(spec, None if identity is None else str(identity))
    root = check_xml(xml, NETWORK_ALLOWLIST, field=FIELD, needs="admin")
    assert root.findtext("name") == spec.name


# -- through the intake and the running handlers --


@pytest.mark.slow
async def test_the_intake_refuses_for_a_submitter_and_admits_an_admin_with_passthrough(
    config: Config, host: Host
) -> None:
    xml = HOSTILE_DOMAINS["second-devices-with-hostdev"][0](host)
    network = HOSTILE_NETWORKS["tftp-host-root"][0]
    documents = [
        (job_document("vm.define", {"xml": xml}), "/domain/devices[2]"),
        (job_document("network.define", {"name": "n", "xml": network}), "/network/ip/tftp"),
    ]
    for allow in (False, True):
        settings_ = config.model_copy(
            update={"policy": PolicyConfig(image_roots=[host.root], allow_passthrough=allow)}
        )
        intake = Agent(settings_).intake
        for document, element in documents:
            for privileged in (False, True):
                if allow and privileged:
                    admit_now(intake.prepare(document, transport="test", privileged=True))
                    continue
                # The policy check runs at submit, off the trio thread; here, in place.
                with pytest.raises(ForbiddenError) as caught:
                    admit_now(intake.prepare(document, transport="test", privileged=privileged))
                assert (caught.value.details["field"], caught.value.details["element"]) == (
                    FIELD,
                    element,
                )


@pytest.mark.slow
async def test_vm_define_refuses_disks_whose_images_name_files_outside_the_roots(
    agent: Agent, host: Host
) -> None:
    for image, fmt, said in (
        ("backed.qcow2", "qcow2", "outside the image roots"),
        ("datafile.qcow2", "qcow2", "external data file"),
    ):
        name = f"evil-{uuid.uuid4().hex[:6]}"
        as_spec = {
            "spec": {
                "name": name,
                "memory_mib": 64,
                "disks": [{"path": f"{host.root}/{image}", "format": fmt}],
            }
        }
        # The image opener (agent.policy.images) refuses them at intake, and again when
        # the job runs (agent.handlers.domain_checks).
        with pytest.raises(ForbiddenError) as refused:
            await agent.intake.submit(job_document("vm.define", as_spec), transport="test")
        error = refused.value.message
        assert error.startswith("payload.data.spec.disks.0.path: "), error
        assert said in error
        as_xml = {"xml": _domain(_disk(host.root / image, fmt)).replace("evil", name)}
        with pytest.raises(ForbiddenError) as refused:
            await agent.intake.submit(job_document("vm.define", as_xml), transport="test")
        error = refused.value.message
        assert error.startswith(f"{FIELD}: "), error
        assert said in error
        assert SECRET.decode() not in error
        assert name not in [d["name"] for d in (await ok(agent, "vm.list", {}))["domains"]]


@pytest.mark.slow
async def test_vm_define_takes_checked_images_and_nics_on_existing_networks(
    agent: Agent, host: Host
) -> None:
    name = f"fine-{uuid.uuid4().hex[:6]}"
    disks = [
        {"path": f"{host.root}/good.qcow2"},
        {"path": f"{host.root}/later.raw", "format": "raw"},  # made before vm.start
    ]
    spec = {"name": name, "memory_mib": 64, "disks": disks, "networks": [{"network": "default"}]}
    assert (await ok(agent, "vm.define", {"spec": spec}))["created"] is True
    missing = {**spec, "networks": [{"network": "default"}, {"network": "nowhere"}]}
    error = await failed(agent, "vm.define", {"spec": missing})
    assert error == "network 'nowhere' not found"
    await ok(agent, "vm.undefine", {"name": name})


# -- pools --


def test_a_pool_directory_is_walked_without_links(policy: Policy, host: Host) -> None:
    field = "payload.data.path"
    for path, why in (
        (host.root / "linkdir", "symbolic links are not followed"),
        (host.root / "linkdir" / "sub", "symbolic links are not followed"),
        (host.root / "plain", "a component is not a directory"),
        (host.root / "plain" / "sub", "a component is not a directory"),
        (host.root, "a pool must lie below an image root"),
        (host.outside / "pool", "only paths under"),
    ):
        for create in (False, True):
            with pytest.raises(ForbiddenError) as caught:
                check_pool_directory(policy, str(path), field=field, missing_ok=True, create=create)
            assert caught.value.details["field"] == field
            assert why in caught.value.details["reason"], (path, caught.value.details)
    assert sorted(os.listdir(host.outside)) == ["data.raw", "secret.raw"]  # nothing made there


def test_a_missing_pool_directory_is_made_beneath_its_root(policy: Policy, host: Host) -> None:
    field = "payload.data.path"
    target = host.root / "pools" / "a"
    with pytest.raises(ForbiddenError, match="build: true makes it"):
        check_pool_directory(policy, str(target), field=field)
    assert check_pool_directory(policy, str(target), field=field, missing_ok=True) == str(target)
    assert not target.exists()
    check_pool_directory(policy, str(target), field=field, create=True)
    assert target.is_dir()
    assert not target.is_symlink()
    # A link put where the directory was is refused when the job runs, not followed.
    target.rmdir()
    target.symlink_to(host.outside)
    with pytest.raises(ForbiddenError, match="symbolic links"):
        check_pool_directory(policy, str(target), field=field, create=True)


def test_pools_widen_the_roots_only_from_link_free_paths(
    policy: Policy, host: Host, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "srv-pool"
    elsewhere.mkdir()
    linked = tmp_path / "linked-pool"
    linked.symlink_to(host.outside)
    paths = [
        str(elsewhere),
        str(linked),
        str(linked / "below"),
        str(host.root / "linkdir"),  # under a configured root: reached through it
        str(host.root / "sub"),
        "/nonexistent-pool",  # nothing there to follow (the test driver's /default-pool)
    ]
    kept, refused = pool_roots(policy, paths)
    assert kept == [str(elsewhere), "/nonexistent-pool"]
    assert set(refused) == {str(linked), str(linked / "below")}
    assert all("is a symbolic link" in why for why in refused.values())


@pytest.mark.slow
async def test_a_pool_on_a_link_never_becomes_an_image_root(
    agent: Agent, host: Host, tmp_path: Path
) -> None:
    linked = tmp_path / "linked-pool"
    linked.symlink_to(host.outside)
    # An operator (not the agent) defines a pool on a link; libvirt takes it.
    pool_xml = (
        f"<pool type='dir'><name>linked-{uuid.uuid4().hex[:6]}</name>"
        f"<target><path>{linked}</path></target></pool>"
    )
    pool = await agent.libvirt.call(lambda conn: conn.storagePoolDefineXML(pool_xml, 0))
    try:
        facts = await refresh_pool_roots(agent.libvirt, agent.policy)
        assert str(linked) not in facts["image_roots"]
        assert str(host.root) in facts["image_roots"]
        with pytest.raises(ForbiddenError) as caught:
            await agent.intake.submit(
                job_document("image.checksum", {"path": str(linked / "secret.raw")}),
                transport="test",
            )
        assert "outside the image roots" in caught.value.message
    finally:
        await agent.libvirt.call(lambda conn: pool.undefine())


@pytest.mark.slow
async def test_storage_pool_define_refuses_a_link_at_intake(agent: Agent, host: Host) -> None:
    for path in (host.root / "linkdir", host.root / "linkdir" / "pool"):
        document = job_document("storage.pool.define", {"name": "evil", "path": str(path)})
        with pytest.raises(ForbiddenError) as caught:
            await agent.intake.submit(document, transport="test")
        assert caught.value.details["field"] == "payload.data.path"
        assert caught.value.details["reason"] == "symbolic links are not followed"
    assert sorted(os.listdir(host.outside)) == ["data.raw", "secret.raw"]
