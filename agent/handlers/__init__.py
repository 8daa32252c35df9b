"""Handlers: one small async function per operation, declared with `agent.handler`."""
