"""The resource view: reads of VMs, pools, volumes, networks and the host, and the
actions that become jobs."""
