"""python -m agent: the same as the hostagent command."""

from agent.cli import main

raise SystemExit(main())
