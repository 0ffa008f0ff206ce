"""structlog set-up: JSON lines in one file per process under the session's ``logs/``."""

from __future__ import annotations

import os
from pathlib import Path

import structlog


def configure(log_dir: str | Path | None, name: str) -> Path | None:
    """Send this process's structured logs to ``<log_dir>/<name>.jsonl`` (or nowhere)."""
    processors = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.dict_tracebacks,
        structlog.processors.JSONRenderer(),
    ]
    if log_dir is None:
        structlog.configure(processors=processors, logger_factory=structlog.ReturnLoggerFactory())
        return None
    path = Path(log_dir) / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *processors],
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        context_class=dict,
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(pid=os.getpid(), process=name)
    return path
