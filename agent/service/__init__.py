"""The daemon: the composition root, serve/signals/drain, systemd, journald, logging,
the state lock."""
