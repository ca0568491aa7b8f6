"""Structured logging: structlog events on stderr (JSON lines or a readable console), or in a
rotated file while the chat console owns the terminal.

Every line carries ``role`` and ``peer_id`` (bound once, when the identity is known). py-libp2p's
loggers are detached and noisy (trap 11): they are re-attached to the root logger here, rendered
by the same formatter, and held at their own level (``log.libp2p_level``). stdout is never used:
it belongs to the chat UI and to machine output.

With a :class:`LogFile` the logs go to that file only, as JSON lines, rotated and size-capped
(:class:`logging.handlers.RotatingFileHandler`): log lines must never land between chat lines.
What still deserves the user's eye, each WARNING or worse, reaches whoever called
:func:`watch_warnings` as one short line, at most one per second per event (:class:`WarningWatch`).
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import re
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import structlog
from p2pchat.node.errors import StartupError
from p2pchat.node.ids import short_id
from p2pchat.node.refusals import RefusalCount

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# Loggers of libraries we run inside the node, held at the libp2p level: all are chatty at INFO.
_LIBRARY_LOGGERS = ("libp2p", "multiaddr", "hypercorn", "zeroconf")

_node_fields: dict[str, str] = {}


def bind_node(*, role: str, peer_id: str | None = None) -> None:
    """Set the fields stamped on every log line from now on (any thread, any task)."""
    _node_fields["role"] = role
    if peer_id is not None:
        _node_fields["peer_id"] = peer_id


def _add_node_fields(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in _node_fields.items():
        event.setdefault(key, value)
    return event


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time, so the chat console's stdout/stderr
    proxy (which prints above the prompt) also carries log lines."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def use_json(fmt: str, stream: TextIO) -> bool:
    """Whether ``fmt`` (auto | json | console) means JSON lines on ``stream``."""
    if fmt == "auto":
        return not stream.isatty()
    return fmt == "json"


@dataclass(frozen=True)
class LogFile:
    """A rotated log file: rotated when it would pass ``max_bytes``, ``backups`` old files
    kept (``<path>.1`` newest), so the logs never hold more than ``(backups + 1) * max_bytes``."""

    path: Path
    max_bytes: int
    backups: int


_current_file: Path | None = None


def log_file() -> Path | None:
    """Where the logs go now: the file :func:`configure_logging` was given, or None (stderr)."""
    return _current_file


def configure_logging(
    *,
    level: str,
    fmt: str,
    libp2p_level: str = "error",
    stream: TextIO | None = None,
    file: LogFile | None = None,
) -> None:
    """Route structlog and stdlib logging to ``file`` (JSON lines, rotated) if given, else to
    ``stream`` (default stderr) in format ``fmt``; WARNING and worse also reach the
    :func:`watch_warnings` callbacks.

    Raises:
        StartupError: the log file's directory cannot be created or the file opened.
    """
    global _current_file
    stream = stream or sys.stderr
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _add_node_fields,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if file is not None or use_json(fmt, stream):
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler: logging.Handler
    if file is not None:
        handler = _open_file(file)
    else:
        # Logs to a terminal follow sys.stderr, so a front end can print them above its
        # prompt; logs redirected to a file or pipe stay there.
        follow = stream is sys.stderr and stream.isatty()
        handler = logging.StreamHandler(_CurrentStderr() if follow else stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if old is not _warnings:
            old.close()
    root.addHandler(handler)
    root.addHandler(_warnings)
    root.setLevel(_LEVELS[level])
    _current_file = file.path if file is not None else None

    library_level = _LEVELS[libp2p_level]
    for name in _LIBRARY_LOGGERS:
        library_logger = logging.getLogger(name)
        # `import libp2p` sets propagate=False and attaches nothing: re-attach it to ours.
        for old in list(library_logger.handlers):
            library_logger.removeHandler(old)
        library_logger.propagate = True
        library_logger.setLevel(library_level)
    logging.captureWarnings(True)


def _open_file(file: LogFile) -> logging.Handler:
    try:
        # Every directory made here is private, the data dir too when the log file is the
        # first thing in it (mkdir(parents=True) would leave those above the last one 0755).
        missing = [d for d in (file.path.parent, *file.path.parent.parents) if not d.exists()]
        for directory in reversed(missing):
            directory.mkdir(mode=0o700, exist_ok=True)
        return logging.handlers.RotatingFileHandler(
            file.path, maxBytes=file.max_bytes, backupCount=file.backups, encoding="utf-8"
        )
    except OSError as error:
        raise StartupError(
            f"log file {file.path}: cannot open: {error.strerror or error}"
        ) from None


# --- warnings for the front end -----------------------------------------------------------------

WarningCallback = Callable[[str], None]
SUMMARY_MAX_CHARS = 160
# Event names remembered for the rate limit; the least recently warned are forgotten first (an
# event's name is a fixed string of the code, so few exist; the bound is for library records).
_MAX_EVENTS = 256


def summarize(record: logging.LogRecord) -> tuple[str, str]:
    """(event name, one short line) for ``record``: ``relay reservation failed: connection
    refused``. The event name is the structlog event (the stdlib message template for library
    records); the line adds the record's ``error`` or ``reason``, or its exception. Peer ids in
    it are shortened (:func:`~p2pchat.node.ids.short_id`)."""
    detail = ""
    if isinstance(record.msg, dict):
        event = str(record.msg.get("event", ""))
        for key in ("error", "reason"):
            if record.msg.get(key):
                detail = str(record.msg[key])
                break
        else:
            exception = record.msg.get("exception")
            if isinstance(exception, str) and exception.strip():
                detail = exception.strip().splitlines()[-1]
    else:  # a library's stdlib record: its template names the event, the message says it
        event = str(record.msg)
        try:
            return event, _one_line(record.getMessage())
        except Exception:  # broken %-arguments must not break the summary
            return event, _one_line(event)
    if not detail and record.exc_info and record.exc_info[1] is not None:
        error = record.exc_info[1]
        detail = f"{type(error).__name__}: {error}"
    line = f"{event}: {detail}" if detail else event
    return event, _one_line(line)


# A PeerId in text form: Ed25519 ("12D3KooW…") or RSA/sha256 ("Qm…"), 46-52 base58 characters.
_PEER_ID = re.compile(r"\b(?:12D3KooW|Qm)[1-9A-HJ-NP-Za-km-z]{42,46}\b")


def _one_line(text: str) -> str:
    """One line of at most :data:`SUMMARY_MAX_CHARS`, peer ids in their short form."""
    text = _PEER_ID.sub(lambda found: short_id(found[0]), " ".join(text.split()))
    if len(text) > SUMMARY_MAX_CHARS:
        text = text[: SUMMARY_MAX_CHARS - 1] + "…"
    return text


class WarningWatch(logging.Handler):
    """Passes a one-line summary of each WARNING-or-worse record to the watchers, at most one
    per ``interval`` seconds per event name; the ones held back in between are counted and the
    next summary of that event says so (``… (and 41 more)``). A storm of one warning thus costs
    the console one line a second, and a quiet event is never delayed. The counting is the one
    rate limit of refusal logs (:class:`~p2pchat.node.refusals.RefusalCount`), bounded in the
    events it remembers (library records name their own).

    Watchers are called inline, on the logging thread; they must not block, and one that raises
    is ignored (logging must go on).
    """

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(level=logging.WARNING)
        self._watchers: list[WarningCallback] = []
        self._count = RefusalCount(every=interval, clock=clock, most=_MAX_EVENTS)
        self._guard = threading.Lock()  # records come from any thread

    def watch(self, callback: WarningCallback) -> Callable[[], None]:
        """Register ``callback``; returns the function that unregisters it."""
        with self._guard:
            self._watchers.append(callback)

        def unwatch() -> None:
            with self._guard:
                if callback in self._watchers:
                    self._watchers.remove(callback)

        return unwatch

    def emit(self, record: logging.LogRecord) -> None:
        with self._guard:
            watchers = list(self._watchers)
        if not watchers:
            return
        try:
            event, line = summarize(record)
        except Exception:
            return
        with self._guard:
            held = self._count.note(event)
        if held is None:
            return
        if held:
            line = f"{line} (and {held} more)"
        for watcher in watchers:
            with contextlib.suppress(Exception):  # a front end's bug must not break logging
                watcher(line)


_warnings = WarningWatch()


def watch_warnings(callback: WarningCallback) -> Callable[[], None]:
    """Call ``callback`` with one short line for each WARNING-or-worse log record from now on
    (e.g. ``relay reservation failed: connection refused``), at most one per second per event
    (see :class:`WarningWatch`). It may be called from any thread and must not block. Returns
    the function that unregisters it."""
    return _warnings.watch(callback)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger; use events with key-value context, not formatted strings."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
