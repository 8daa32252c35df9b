"""The real libvirtd fixtures of the handler tests, for vm.define + vm.start on hostile disks."""

from tests.handlers.conftest import libvirtd, observer  # noqa: F401 (fixtures, used by name)
