"""Reading a claimed file: sized by fstat, yet whole (or over the limit) when
the file grew after it was measured."""

from __future__ import annotations

import os
from pathlib import Path

from agent.transports.spool.claim import _read_up_to


def _fd(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / "job.json"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def test_a_file_is_read_whole_at_its_measured_size(tmp_path: Path) -> None:
    fd = _fd(tmp_path, b'{"job": 1}')
    try:
        assert _read_up_to(fd, 10, 1024) == b'{"job": 1}'
    finally:
        os.close(fd)


def test_a_file_that_grew_after_fstat_is_read_to_its_end(tmp_path: Path) -> None:
    fd = _fd(tmp_path, b"x" * 5000)
    try:
        # Measured at 4 bytes, 5000 by the time it is read.
        assert _read_up_to(fd, 4, 1024 * 1024) == b"x" * 5000
    finally:
        os.close(fd)


def test_a_file_that_grew_past_the_limit_reads_one_byte_over(tmp_path: Path) -> None:
    fd = _fd(tmp_path, b"x" * 5000)
    try:
        assert len(_read_up_to(fd, 4, 100)) == 101  # the caller refuses it as too large
    finally:
        os.close(fd)
