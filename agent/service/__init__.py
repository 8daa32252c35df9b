"""The daemon: the composition root (agent.py) and its settings (settings.py),
serve/signals/drain, systemd, journald, logging, the state lock."""
