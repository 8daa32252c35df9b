"""The real-QEMU connection fixture of the handler tests (libvirtd itself is the root conftest's),
for vm.define + vm.start on hostile disks."""

from tests.handlers.conftest import observer  # noqa: F401 (a fixture, used by name)
