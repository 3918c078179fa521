"""Service logs: one JSON object per line on stderr, through python-json-logger.

Every line carries `time` (UTC, ISO 8601), `level` and `logger`. The service's
events (the audit of each hook call, feedback, authentication) are logged as a
JSON object message (`log_event`, auth.py); their fields are merged into the
line. Any other message (the FHIR client's, gunicorn's) is the line's `message`.

What the lines never hold: access tokens, JWTs, PHI. Exceptions are logged as
their class names and frames only (file, line, function), never their messages,
which may repeat what a client or a FHIR server sent. gunicorn's access log
(GunicornLogger) has no query strings, headers or unknown paths.

Configured in one place: `configure_logging()` for the app's loggers (every
create_app), `GunicornLogger` for gunicorn's own error and access logs
(`cds-service serve`, or `-c python:cds_service.hooks.gunicorn_config` with
plain gunicorn).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import logging
import re
import sys
import traceback
from typing import Any

import orjson
from gunicorn.glogging import Logger as _GunicornBaseLogger
from pythonjsonlogger.orjson import OrjsonFormatter

from .wire import is_uuid

#: The paths the access log names as they are; any other path is logged as "(other)":
#: a client may put anything in a path, and the log must not repeat it.
_KNOWN_PATH = re.compile(r"/(cds-services(/[A-Za-z0-9._-]{1,64}(/feedback)?)?|healthz|readyz|openapi\.json)")
#: The hook call being served on this thread (or in this context), for every line logged meanwhile.
_HOOK_INSTANCE: contextvars.ContextVar[str | None] = contextvars.ContextVar("hook_instance", default=None)


class JsonLineFormatter(OrjsonFormatter):
    """One JSON object per record: time, level, logger, then the event's fields (a
    message that is a JSON object) or the message text."""

    def __init__(self) -> None:
        super().__init__(["asctime", "levelname", "name", "message"],
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        stamp = dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def formatException(self, ei) -> list[str]:  # noqa: N802
        return exception_summary(ei[1])

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return stack_info

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        message = log_data.get("message")
        if isinstance(message, str) and message.startswith("{") and message.endswith("}"):
            try:
                event = orjson.loads(message)
            except orjson.JSONDecodeError:
                event = None
            if isinstance(event, dict):
                del log_data["message"]
                for key, value in event.items():  # time, level and logger are ours
                    log_data.setdefault(key, value)
        hook_instance = _HOOK_INSTANCE.get()
        if hook_instance is not None:
            log_data.setdefault("hookInstance", hook_instance)
        return log_data


def exception_summary(exc: BaseException | None) -> list[str]:
    """An exception as its classes (the chain of causes) and frames (file:line in function),
    without its message, which may repeat what a client or a FHIR server sent (PHI)."""
    out = [f"{type(e).__module__}.{type(e).__qualname__}" for e in _chain(exc)]
    if exc is not None:
        out += [f"{frame.filename}:{frame.lineno} in {frame.name}"
                for frame in traceback.extract_tb(exc.__traceback__)]
    return out


def _chain(exc: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and len(out) < 10:
        out.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return out


def _stderr_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    handler._cds_json = True  # type: ignore[attr-defined]
    return handler


def configure_logging() -> None:
    """Give the cds_service loggers a JSON stderr handler unless the host application
    (or an earlier call) already configured one; make gunicorn's own loggers, when
    this runs in a gunicorn worker, write JSON lines too."""
    logger = logging.getLogger("cds_service")
    if not logger.handlers:
        logger.addHandler(_stderr_handler())
        logger.setLevel(logging.INFO)
        logger.propagate = False
    # Plain gunicorn without our logger class: its handlers get our formatter once the
    # worker loads the app (what the master logs before that stays gunicorn's text).
    for name in ("gunicorn.error", "gunicorn.access"):
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler.formatter, JsonLineFormatter):
                handler.setFormatter(JsonLineFormatter())


@contextlib.contextmanager
def hook_instance_logged(value: Any):
    """While serving a hook call: every line logged in this context names its hookInstance
    (only if it is the UUID it should be: no client text in logs). Threads started
    meanwhile inherit it only if they run in a copy of the context. Yields it (None if not a UUID)."""
    checked = value if is_uuid(value) else None
    token = _HOOK_INSTANCE.set(checked)
    try:
        yield checked
    finally:
        _HOOK_INSTANCE.reset(token)


def event(**fields: Any) -> str:
    """An event message: a JSON object (the formatter merges its fields into the line)."""
    return orjson.dumps({k: v for k, v in fields.items() if v is not None}).decode()


def loggable_path(path: str) -> str:
    """The request path if it is one of the service's own, else "(other)"."""
    return path if _KNOWN_PATH.fullmatch(path or "") else "(other)"


class GunicornLogger(_GunicornBaseLogger):
    """gunicorn's error and access logs as JSON lines on stderr (gunicorn's
    `logger_class`). An access line: method, path (no query string; "(other)" for
    a path that is not the service's), status, bytes and latency."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if getattr(handler, "_gunicorn", False):
                    handler.setFormatter(JsonLineFormatter())
                    if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                        handler.setStream(sys.stderr)  # one stream for every log line

    def access(self, resp, req, environ, request_time) -> None:
        if not self.access_log_enabled:
            return
        try:
            status = int(str(resp.status).split(None, 1)[0])
        except (ValueError, IndexError):
            status = None
        self.access_log.info(event(
            event="access", method=environ.get("REQUEST_METHOD"), path=loggable_path(environ.get("PATH_INFO", "")),
            status=status, bytes=getattr(resp, "sent", None),
            latencyMs=round(request_time.total_seconds() * 1000, 1)))
