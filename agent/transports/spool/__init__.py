"""The spool transport: job files dropped into a directory (Maildir discipline)."""
