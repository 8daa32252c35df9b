"""The job core: intake, dispatcher, registry, job context, store Protocol, outbox,
events, health, capabilities, metrics, submitters. It imports no transport, CLI,
handler or libvirt."""
