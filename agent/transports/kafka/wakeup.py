"""A file descriptor that becomes readable when a Consumer has something to serve.

confluent-kafka's poll() wakes every 200 ms whatever its timeout (it checks for
signals between slices), which made an idle consumer thread the busiest thread
of an idle agent (5 wake-ups/s). librdkafka can instead write to a file
descriptor when its consumer queue goes from empty to not empty
(rd_kafka_queue_io_event_enable, its documented way into an event loop), but
confluent-kafka does not expose it; it is reached here through the librdkafka
that confluent-kafka loaded, with the client's handle read from the Python
object (its first field, checked by asking librdkafka the client's name).
Anything unexpected leaves `Wakeup.open` answering None, and the caller polls
as before. The same pipe wakes the thread for the agent's own commands.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import threading
from pathlib import Path

import structlog
from confluent_kafka import Consumer

log = structlog.get_logger("agent.transports.kafka")

_lib: ctypes.CDLL | None = None


def _librdkafka() -> ctypes.CDLL | None:
    """The librdkafka this process loaded for confluent-kafka (never a second copy)."""
    global _lib  # noqa: PLW0603 (loaded once per process)
    if _lib is None:
        maps = Path("/proc/self/maps").read_text().splitlines()
        paths = {line.split()[-1] for line in maps if "librdkafka" in line.rsplit("/", 1)[-1]}
        if len(paths) != 1:
            return None
        lib = ctypes.CDLL(paths.pop())
        lib.rd_kafka_name.restype = ctypes.c_char_p
        lib.rd_kafka_name.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_queue_get_consumer.restype = ctypes.c_void_p
        lib.rd_kafka_queue_get_consumer.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_queue_io_event_enable.restype = None
        lib.rd_kafka_queue_io_event_enable.argtypes = [
            ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t,
        ]  # fmt: skip
        lib.rd_kafka_queue_destroy.restype = None
        lib.rd_kafka_queue_destroy.argtypes = [ctypes.c_void_p]
        _lib = lib
    return _lib


def _handle(consumer: Consumer, client_id: str) -> int | None:
    """The rd_kafka_t of `consumer`, or None when it is not where it is expected."""
    offset = object.__basicsize__  # the field after PyObject_HEAD
    if type(consumer).__basicsize__ < offset + ctypes.sizeof(ctypes.c_void_p):
        return None
    handle = ctypes.c_void_p.from_address(id(consumer) + offset).value
    lib = _librdkafka()
    if not handle or lib is None:
        return None
    name = lib.rd_kafka_name(handle) or b""
    if not name.decode(errors="replace").startswith(f"{client_id}#consumer-"):
        return None
    return int(handle)


class Wakeup:
    """The read end of a pipe librdkafka writes to when the consumer queue fills."""

    def __init__(self, lib: ctypes.CDLL, queue: int, read: int, write: int) -> None:
        self._lib = lib
        self._queue: int | None = queue
        self._read = read
        self._write = write
        # wake() runs on other threads: it must never write to a closed (reused) fd.
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, consumer: Consumer, client_id: str) -> Wakeup | None:
        """Ask librdkafka to write to a new pipe; None where that cannot be done."""
        try:
            handle = _handle(consumer, client_id)
            lib = _librdkafka()
        except (OSError, AttributeError, ValueError) as exc:
            log.info("kafka.wakeup_unavailable", reason=str(exc))
            return None
        if handle is None or lib is None:
            log.info("kafka.wakeup_unavailable", reason="librdkafka's handle not found")
            return None
        queue = lib.rd_kafka_queue_get_consumer(handle)
        if not queue:
            return None
        try:
            read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:  # out of descriptors: poll as before
            lib.rd_kafka_queue_destroy(queue)
            log.warning("kafka.wakeup_unavailable", reason=str(exc))
            return None
        lib.rd_kafka_queue_io_event_enable(queue, write, b"\1", 1)
        return cls(lib, queue, read, write)

    def wake(self) -> None:
        """Make the next or current `wait` return (thread-safe)."""
        with self._lock:
            if self._closed:
                return
            # A full pipe already wakes the waiter.
            with contextlib.suppress(BlockingIOError):
                os.write(self._write, b"\0")

    def wait(self, seconds: float) -> None:
        """Until librdkafka has something to serve, `wake` is called, or `seconds` pass;
        then forget what woke it (call poll() until it answers nothing, then wait)."""
        ready, _, _ = select.select([self._read], [], [], seconds)
        if ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._read, 4096):
                    pass

    def close(self) -> None:
        """Stop librdkafka's writes; call before the Consumer closes."""
        if self._queue is not None:
            self._lib.rd_kafka_queue_io_event_enable(self._queue, -1, None, 0)
            self._lib.rd_kafka_queue_destroy(self._queue)
            self._queue = None
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._read)
                os.close(self._write)
