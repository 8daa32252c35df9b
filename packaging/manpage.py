"""packaging/manpage.py: the hostagent(1) man page, from the CLI's own parser
(argparse-manpage, a build-time dependency: run with the checkout's .venv)."""

from __future__ import annotations

import sys

from build_manpages.manpage import Manpage  # type: ignore[import-untyped]  # no types

from agent.cli.parser import build_parser
from agent.cli.support import EXIT_CODES_HELP


def render() -> str:
    parser = build_parser()
    page = str(Manpage(parser)).replace(
        ".SH NAME\nhostagent\n",
        ".SH NAME\nhostagent \\- per-host job agent and its command line\n",
        1,
    )
    codes = "\n".join(
        f".TP\n.B {line.split()[0]}\n{' '.join(line.split()[1:])}"
        for line in EXIT_CODES_HELP.splitlines()[1:]
        if line.strip()
    )
    return f"{page}\n.SH EXIT STATUS\n{codes}\n"


if __name__ == "__main__":
    sys.stdout.write(render())
