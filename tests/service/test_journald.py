"""journald priorities: `<N>` prefixes when stderr is the journal, failed jobs at
warning with their duration."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest
import structlog

from agent.service.journald import PrefixedLoggerFactory, stderr_is_journal
from tests.agentproc import AgentProcess
from tests.jobs import job


def journal_stream(path: Path) -> tuple[io.TextIOWrapper, dict[str, str]]:
    stream = path.open("w")
    stat = os.fstat(stream.fileno())
    return stream, {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}


def test_stderr_is_the_journal_only_when_journal_stream_names_it(tmp_path: Path) -> None:
    stream, environ = journal_stream(tmp_path / "journal")
    other = (tmp_path / "other").open("w")
    with stream, other:
        assert stderr_is_journal(stream, environ)
        assert not stderr_is_journal(other, environ)
        assert not stderr_is_journal(stream, {})
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": "garbage"})


def test_lines_to_the_journal_carry_their_syslog_priority(tmp_path: Path) -> None:
    stream, environ = journal_stream(tmp_path / "journal")
    with stream:
        # The factory decides from JOURNAL_STREAM, as configure_logging's does; a
        # logger of its own keeps structlog's global configuration untouched.
        os.environ["JOURNAL_STREAM"] = environ["JOURNAL_STREAM"]
        try:
            factory = PrefixedLoggerFactory(stream)
        finally:
            del os.environ["JOURNAL_STREAM"]
        log = structlog.wrap_logger(
            factory(),
            processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        )
        log.debug("a")
        log.info("b")
        log.warning("c")
        log.error("d")
    lines = (tmp_path / "journal").read_text().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>"]
    assert json.loads(lines[2][3:])["event"] == "c"


def test_a_terminal_or_pipe_gets_bare_lines() -> None:
    out = io.StringIO()
    logger = PrefixedLoggerFactory(out, prefix=False)()
    logger.warning("plain")
    assert out.getvalue() == "plain\n"


@pytest.mark.slow
def test_failed_jobs_finish_at_warning_with_their_duration(tmp_path: Path) -> None:
    state, spool = tmp_path / "state", tmp_path / "spool"
    agent = AgentProcess(state, spool).start()
    try:
        (spool / "incoming" / "ok.json").write_text(json.dumps(job("ok", "system.echo")))
        failing = job("late", "system.sleep", {"seconds": 5}, timeout_seconds=0.1)
        (spool / "incoming" / "late.json").write_text(json.dumps(failing))
        for _ in range(200):
            if len(agent.events("job.finished")) == 2:
                break
            time.sleep(0.05)
    finally:
        agent.stop()
    finished = {line["job_id"]: line for line in agent.events("job.finished")}
    assert finished["ok"]["level"] == "info"
    assert finished["late"]["level"] == "warning"
    assert finished["late"]["status"] == "Failed"
    assert 0.05 < float(finished["late"]["duration_seconds"]) < 5  # type: ignore[arg-type]
    assert float(finished["ok"]["duration_seconds"]) >= 0  # type: ignore[arg-type]
