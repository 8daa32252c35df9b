"""python -m agent: the same as the hostagent command."""

from agent.cli.command import main

raise SystemExit(main())
