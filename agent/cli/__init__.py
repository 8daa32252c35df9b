"""The hostagent command: its parser, commands, offline paths and HTTP client."""
