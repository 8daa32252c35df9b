"""Shapes of the resource view (VMs, pools, volumes, networks, the host): what the
reads answer and what the actions take. The HTTP API documents them in /openapi.json."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DomainState = Literal[
    "nostate",
    "running",
    "blocked",
    "paused",
    "shutdown",
    "shutoff",
    "crashed",
    "pmsuspended",
    "unknown",
]


class _Shape(BaseModel):
    # Built on first use (a request, /openapi.json), not while the agent starts.
    model_config = ConfigDict(defer_build=True)


class _Query(_Shape):
    model_config = ConfigDict(extra="forbid")


class VmListQuery(_Query):
    state: DomainState | None = Field(default=None, description="only VMs in this state")


class WindowQuery(_Query):
    window_seconds: float = Field(
        default=0.5, ge=0.05, le=5, description="how long rates (cpu %, throughput) are measured"
    )


class LiveQuery(_Query):
    interval_seconds: float = Field(default=1.0, ge=0.5, le=10, description="between samples")


class VmDeleteQuery(_Query):
    force: bool = Field(default=False, description="power a running VM off first")
    remove_storage: bool = Field(default=False, description="also delete its libvirt volumes")


class PoolDeleteQuery(_Query):
    delete_data: bool = Field(default=False, description="also remove the (empty) directory")


# --- reads ---


class VmSummary(_Shape):
    name: str
    uuid: str
    state: DomainState
    id: int | None = Field(description="libvirt's id while it runs")
    vcpus: int
    memory_kib: int
    max_memory_kib: int
    persistent: bool
    autostart: bool


class VmList(_Shape):
    vms: list[VmSummary]
    total: int


class Disk(_Shape):
    device: str | None
    type: str | None
    source: str | None
    target: str | None
    bus: str | None
    format: str | None
    readonly: bool


class Nic(_Shape):
    type: str | None
    mac: str | None
    source: str | None
    model: str | None
    target: str | None


class Graphics(_Shape):
    type: str | None
    port: int | None = Field(description="null until the VM runs when autoport is on")
    listen: str | None
    autoport: bool


class Snapshot(_Shape):
    name: str
    description: str | None
    state: str | None
    created: int | None = Field(description="seconds since the epoch")
    parent: str | None
    current: bool


class VmStats(_Shape):
    window_seconds: float
    cpu_time_ns: int
    cpu_percent: float = Field(description="of all the VM's vCPUs together, 0-100")
    disk_read_bytes_per_second: float
    disk_write_bytes_per_second: float
    net_rx_bytes_per_second: float
    net_tx_bytes_per_second: float


class VmDetail(VmSummary):
    disks: list[Disk]
    nics: list[Nic]
    graphics: list[Graphics]
    snapshots: list[Snapshot]
    stats: VmStats | None = Field(description="null unless the VM is active")
    actions: list[str] = Field(description="the actions that would change it now")


class PoolInfo(_Shape):
    name: str
    uuid: str
    type: str | None
    state: str
    active: bool
    persistent: bool
    autostart: bool
    path: str | None
    capacity_bytes: int
    allocation_bytes: int
    available_bytes: int
    volumes: int | None = Field(description="null while the pool is inactive")
    actions: list[str]


class PoolList(_Shape):
    pools: list[PoolInfo]
    total: int


class VolumeInfo(_Shape):
    pool: str
    name: str
    path: str
    key: str
    type: str
    format: str | None
    capacity_bytes: int
    allocation_bytes: int
    backing_store: str | None


class VolumeList(_Shape):
    pool: str
    volumes: list[VolumeInfo]
    total: int


class NetworkIp(_Shape):
    family: str
    address: str | None
    prefix: int | None
    dhcp_start: str | None
    dhcp_end: str | None


class NetworkInfo(_Shape):
    name: str
    uuid: str
    state: Literal["active", "inactive"]
    active: bool
    persistent: bool
    autostart: bool
    forward: str
    bridge: str | None
    ips: list[NetworkIp]
    actions: list[str]


class NetworkList(_Shape):
    networks: list[NetworkInfo]
    total: int


class HostFacts(_Shape):
    hostname: str
    worker_id: str
    os: str | None
    kernel: str
    arch: str
    cpu_model: str | None
    cpus: int
    cpu_mhz: int | None
    memory_bytes: int
    uptime_seconds: float
    hypervisor: str | None
    hypervisor_version: str | None
    libvirt_version: str | None
    libvirt_uri: str


class Memory(_Shape):
    total_bytes: int
    available_bytes: int
    used_bytes: int
    percent: float
    swap_total_bytes: int
    swap_free_bytes: int


class DirectoryUsage(_Shape):
    role: Literal["state", "spool", "images"]
    path: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    percent: float


class HostStats(_Shape):
    window_seconds: float
    cpus: int
    cpu_percent: float = Field(description="busy share of all CPUs over the window, 0-100")
    load_average: list[float] = Field(description="1, 5 and 15 minutes")
    memory: Memory
    disks: list[DirectoryUsage] = Field(
        description="the filesystems of the state and spool directories and of active dir pools"
    )


# --- action bodies (all optional: an empty body takes the defaults) ---


class _Body(_Shape):
    model_config = ConfigDict(extra="forbid")


class ShutdownBody(_Body):
    timeout_seconds: float = Field(default=120, gt=0, le=3600)
    force: bool = Field(default=False, description="power it off if still up after the timeout")


class SnapshotBody(_Body):
    snapshot: str | None = Field(default=None, description="default: libvirt names it by time")
    description: str | None = None


class AutostartBody(_Body):
    enabled: bool = True


class ResizeBody(_Body):
    capacity_bytes: int = Field(gt=0, description="the new capacity (absolute)")
    allow_shrink: bool = False


class WipeBody(_Body):
    algorithm: Literal["zero", "random"] = "zero"


class CloneBody(_Body):
    new_name: str = Field(min_length=1)
    target_pool: str | None = None


class VolumeCreateBody(_Body):
    name: str = Field(min_length=1)
    capacity_bytes: int = Field(gt=0)
    format: Literal["qcow2", "raw"] = "qcow2"
    allocation_bytes: int = Field(default=0, ge=0)


class EmptyBody(_Body):
    """No body, or `{}`."""
