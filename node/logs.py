"""Structured logging: structlog events on stderr, JSON lines or a readable console.

Every line carries ``role`` and ``peer_id`` (bound once, when the identity is known). py-libp2p's
loggers are detached and noisy (trap 11): they are re-attached to the root logger here, rendered
by the same formatter, and held at their own level (``log.libp2p_level``). stdout is never used:
it belongs to the chat UI and to machine output.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

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


def configure_logging(
    *, level: str, fmt: str, libp2p_level: str = "error", stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging to ``stream`` (default stderr) in one format."""
    stream = stream or sys.stderr
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _add_node_fields,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if use_json(fmt, stream):
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
    # Logs to a terminal follow sys.stderr, so the chat console can print them above its prompt;
    # logs redirected to a file or pipe stay there.
    follow = stream is sys.stderr and stream.isatty()
    handler: logging.Handler = logging.StreamHandler(_CurrentStderr() if follow else stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])

    library_level = _LEVELS[libp2p_level]
    for name in _LIBRARY_LOGGERS:
        library_logger = logging.getLogger(name)
        # `import libp2p` sets propagate=False and attaches nothing: re-attach it to ours.
        for old in list(library_logger.handlers):
            library_logger.removeHandler(old)
        library_logger.propagate = True
        library_logger.setLevel(library_level)
    logging.captureWarnings(True)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger; use events with key-value context, not formatted strings."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
