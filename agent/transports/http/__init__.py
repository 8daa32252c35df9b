"""The HTTP transport: the /api/v1 job API, live events, tokens and TLS."""
