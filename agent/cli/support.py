"""What every hostagent command shares: its exit codes, the config it reads, the
agent it talks to, and the rule that no command ends in a traceback."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config import DEFAULT_CONFIG_PATH
from agent.errors import (
    AgentError,
    BadRequestError,
    ConfigError,
    ForbiddenError,
    NotFoundError,
    UnauthorizedError,
    UnreachableError,
    UsageError,
)

if TYPE_CHECKING:
    from agent.cli.client import AgentClient
    from agent.service.settings import Settings

# Exit codes: documented in --help (EXIT_CODES_HELP) and the README.
EXIT_OK = 0
EXIT_FAILED = 1  # the job failed, or the agent refused the request (invalid, conflict)
EXIT_USAGE = 2  # bad command line or config
EXIT_CANCELLED = 3  # the job was cancelled
EXIT_TIMEOUT = 4  # --wait/--follow gave up before the job finished
EXIT_NOT_FOUND = 66  # no such job, token or file a payload names (sysexits EX_NOINPUT)
EXIT_UNREACHABLE = 69  # no agent answered (sysexits EX_UNAVAILABLE)
EXIT_SOFTWARE = 70  # a bug in hostagent (sysexits EX_SOFTWARE)
EXIT_DENIED = 77  # authentication or permission refused (sysexits EX_NOPERM)
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES_HELP = """\
exit codes:
  0    success (a waited-for job Completed)
  1    the job Failed, or the agent refused the request (invalid, conflict)
  2    usage error, or an invalid config (the key is named)
  3    the job was Cancelled
  4    --wait/--follow timed out before the job finished (it keeps running)
  66   not found: no such job or token, or a file the payload names does not exist
  69   the agent could not be reached
  77   authentication or permission refused (token, socket group, file mode)
  130  interrupted (Ctrl-C)
"""

# A checkout's own config: `make run` uses it, and the CLI finds it when run there.
PROJECT_CONFIG = Path("hostagent.toml")


def config_path(explicit: Path | None, *, discover: bool = True) -> Path | None:
    """The config file a command reads: --config, HOSTAGENT_CONFIG, ./hostagent.toml
    (a checkout, client commands only), else /etc/hostagent/agent.toml if present."""
    if explicit is not None:
        return explicit
    if env := os.environ.get("HOSTAGENT_CONFIG"):
        return Path(env)
    if discover and PROJECT_CONFIG.is_file():
        return PROJECT_CONFIG
    if not DEFAULT_CONFIG_PATH.exists():
        return None
    # The packaged config is 0640 root:hostagent (it can hold secrets): a client command
    # run by a submitter who may not read it uses the defaults, which name the same
    # socket (an empty file: None would mean the default path to the loader).
    if discover and not os.access(DEFAULT_CONFIG_PATH, os.R_OK):
        return Path(os.devnull)
    return DEFAULT_CONFIG_PATH


def exit_code(exc: BaseException) -> int:
    """The exit code of a command that ended with `exc`."""
    for kinds, code in _EXIT_CODES:
        if isinstance(exc, kinds):
            return code
    return EXIT_SOFTWARE


# First match wins: the specific errors before AgentError and OSError.
_EXIT_CODES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int], ...] = (
    (UnreachableError, EXIT_UNREACHABLE),
    ((UnauthorizedError, ForbiddenError, PermissionError), EXIT_DENIED),
    ((ConfigError, UsageError), EXIT_USAGE),
    (NotFoundError, EXIT_NOT_FOUND),
    (KeyboardInterrupt, EXIT_INTERRUPTED),
    ((AgentError, OSError), EXIT_FAILED),
)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def run_command(command: Callable[[], int], *, daemon: bool = False) -> int:
    """Run a command; every way it can end becomes a message and an exit code.

    `daemon`: the agent itself, whose unexpected crash leaves its traceback in
    the journal for whoever investigates.
    """
    import json

    try:
        return command()
    except BrokenPipeError:
        # `hostagent jobs | head -1`: the reader left. Point stdout at /dev/null so
        # the interpreter's final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except AgentError as exc:
        print(f"hostagent: {exc.message}", file=sys.stderr)
        if exc.details and not isinstance(exc, UsageError):  # its one line names the option
            print(json.dumps(exc.details), file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("hostagent: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"hostagent: {exc.strerror or exc}{where}", file=sys.stderr)
        return exit_code(exc)
    except Exception as exc:  # noqa: BLE001  # the last line of defence: no bare traceback
        if daemon or os.environ.get("HOSTAGENT_DEBUG"):
            traceback.print_exc()
        causes = "; ".join(f"{type(leaf).__name__}: {leaf}" for leaf in _leaves(exc))
        hint = "" if daemon else " (HOSTAGENT_DEBUG=1 shows the traceback)"
        print(f"hostagent: internal error: {causes}{hint}", file=sys.stderr)
        return EXIT_SOFTWARE


def add_client_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "reaching the agent (default: the local socket named by the config)"
    )
    group.add_argument(
        "--url", help="the agent's HTTP API, e.g. http://127.0.0.1:8080 (or HOSTAGENT_URL)"
    )
    group.add_argument("--socket", type=Path, help="the agent's local API socket")
    group.add_argument(
        "--token-file", type=Path, help="file holding the API token (or HOSTAGENT_TOKEN)"
    )
    group.add_argument("--ca-file", type=Path, help="CA bundle to verify the agent's certificate")
    group.add_argument("--client-cert", type=Path, help="client certificate (mTLS)")
    group.add_argument("--client-key", type=Path, help="client certificate key (mTLS)")


def socket_of(config: Settings) -> Path | None:
    from agent.transports.http.local import local_socket_path

    # http.enabled is the TCP listener only: the socket has its own switch.
    return local_socket_path(config.http, config.state_dir)


def connect(args: argparse.Namespace, config: Settings) -> AgentClient | None:
    """The running agent: --url or --socket, else HOSTAGENT_URL (set on purpose), else
    the socket the config names, if it is there; None when nothing names one."""
    explicit = getattr(args, "socket", None)
    if url := getattr(args, "url", None) or (None if explicit else os.environ.get("HOSTAGENT_URL")):
        return _over_http(args, url)
    path = explicit or socket_of(config)
    if path is not None and path.is_socket():
        return over_socket(path)
    if explicit is not None:
        raise UnreachableError(f"no agent socket at {path}", field="socket")
    return None


def over_socket(path: Path) -> AgentClient:
    import httpx

    from agent.cli.client import AgentClient

    client = AgentClient("http://localhost", transport=httpx.HTTPTransport(uds=str(path)))
    client.url = f"unix:{path}"
    return client


def _over_http(args: argparse.Namespace, url: str) -> AgentClient:
    from agent.cli.client import AgentClient

    token = os.environ.get("HOSTAGENT_TOKEN")
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise BadRequestError(f"--token-file: {exc}", field="token_file") from exc
    cert = None
    if args.client_cert is not None:
        cert = (str(args.client_cert), str(args.client_key or args.client_cert))
    verify: str | bool = str(args.ca_file) if args.ca_file is not None else True
    return AgentClient(url, token=token, verify=verify, cert=cert)


def no_agent(config: Settings, command: str) -> UnreachableError:
    where = socket_of(config)
    return UnreachableError(
        f"{command}: no running agent found (no socket at {where}); start one "
        "(`make run`, `systemctl start hostagent`) or pass --url",
        field="socket",
    )
