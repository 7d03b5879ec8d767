"""
Log lines out: twistd's classic text lines or one JSON object per line,
written in batches.

twistd's own text observer formats the timestamp of every event afresh and
writes and flushes every line by itself. With one access line per request
that was about a quarter of the CPU time of a small request. ETS's observer
writes the same text (or, with C{LOG_FORMAT=json}, the JSON lines of
L{event_as_json}), formats a timestamp once per second, and writes what one
reactor iteration logged with one write: the lines are out before the
reactor next waits for I/O. A line at C{warn} or above, a line logged from
another thread and every line logged while the reactor is not running are
written at once; the rest is written when the reactor shuts down.

C{twistd ets} installs it as twistd's C{--logger} when twistd would write
to standard output (C{twistd -n} without C{--logfile}: containers, systemd,
C{make run}), and always for JSON (L{use_ets_logs}). With a log file
twistd's own observer stays: it rotates the file.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import datetime, timezone
from typing import IO, Any, Callable

from twisted.logger import (
    ILogObserver,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from .memo import PerSecond

#: The longest batch, in lines, before it is written anyway.
MAX_BATCH = 512
#: Levels whose lines are written at once, with what came before them.
_AT_ONCE = frozenset({LogLevel.warn, LogLevel.error, LogLevel.critical})


def event_as_json(event: dict[str, Any]) -> str:
    """
    One log event as one line of JSON: C{time} (RFC 3339, UTC), C{level},
    C{namespace}, C{message} (the formatted text), the structured fields of
    ETS's own events (the C{ets} member: access-line fields), and
    C{traceback} for a failure.

    Only these members are written, not every key of the event: events of
    other libraries may hold objects that do not belong in a log.
    """
    when = event.get("log_time")
    level = event.get("log_level")
    out: dict[str, Any] = {
        "time": (
            datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")
            if isinstance(when, (int, float)) else None
        ),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace"),
        "message": _message(event),
    }
    fields = event.get("ets")
    if isinstance(fields, dict):
        out.update({k: v for k, v in fields.items() if k not in out})
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        out["traceback"] = failure.getTraceback()
    return json.dumps(out, default=str, ensure_ascii=False) + "\n"


def _access_line(event: dict[str, Any]) -> str | None:
    """The text of an access event (it comes formatted, see observe), else None."""
    line = event.get("ets_access_line")
    if isinstance(line, str) and event.get("log_format") == "{ets_access_line}":
        return line
    return None


def _message(event: dict[str, Any]) -> str:
    line = _access_line(event)
    return formatEvent(event) if line is None else line


def classic_text_formatter() -> Callable[[dict[str, Any]], str | None]:
    """
    A formatter writing exactly what twistd's text observer writes
    (C{"{time} [{namespace}#{level}] {message}\\n"}), with the timestamp
    (whole seconds, RFC 3339) formatted once per second.
    """
    per_second = PerSecond(formatTime)

    def format_time(when: float | None) -> str:
        return "-" if when is None else per_second(when)

    def format_event(event: dict[str, Any]) -> str | None:
        line = _access_line(event)
        if (line is not None and "log_system" not in event and "log_failure" not in event
                and "\n" not in line):
            level = event.get("log_level")
            return "%s [%s#%s] %s\n" % (
                format_time(event.get("log_time")), event.get("log_namespace", "-"),
                "-" if level is None else level.name, line)
        return formatEventAsClassicLogText(event, formatTime=format_time)

    return format_event


@implementer(ILogObserver)
class BatchingFileLogObserver:
    """
    Writes formatted events to C{out}, the lines of one reactor iteration
    at a time (see the module's description).

    @param reactor: the reactor whose iterations batch the lines; the
        installed one when not given (looked up at the first event, after
        twistd has installed it).
    """

    def __init__(self, out: IO[str], format_event: Callable[[dict[str, Any]], str | None],
                 reactor: Any = None) -> None:
        self._out = out
        self._format = format_event
        self._reactor = reactor
        self._thread = threading.get_ident()
        self._lines: list[str] = []
        self._scheduled = False
        self._hooked = False

    def __call__(self, event: dict[str, Any]) -> None:
        text = self._format(event)
        if not text:
            return
        if threading.get_ident() != self._thread:
            self._write(text)
            return
        reactor = self._running_reactor()
        self._lines.append(text)
        if reactor is None or event.get("log_level") in _AT_ONCE or len(self._lines) >= MAX_BATCH:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Write the lines kept so far."""
        self._scheduled = False
        if self._lines:
            text = "".join(self._lines)
            self._lines = []
            self._write(text)

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    def _running_reactor(self) -> Any:
        reactor = self._reactor
        if reactor is None:
            reactor = sys.modules.get("twisted.internet.reactor")
            if reactor is None:
                return None
        if not getattr(reactor, "running", False):
            return None
        if not self._hooked:
            self._hooked = True
            # A batch still waiting when the reactor stops is written then.
            reactor.addSystemEventTrigger("after", "shutdown", self.flush)
        return reactor


def text_log_observer(out: IO[str] | None = None, reactor: Any = None) -> BatchingFileLogObserver:
    """
    twistd's classic text lines, batched, to C{out} (standard output by
    default). Also a C{twistd --logger} factory.
    """
    return BatchingFileLogObserver(sys.stdout if out is None else out, classic_text_formatter(), reactor)


def json_log_observer(out: IO[str] | None = None, reactor: Any = None) -> BatchingFileLogObserver:
    """
    One JSON object per line, batched, to C{out} (standard output by
    default). Also a C{twistd --logger} factory.
    """
    return BatchingFileLogObserver(sys.stdout if out is None else out, event_as_json, reactor)


#: What C{twistd --logger} is set to, by C{LOG_FORMAT}.
LOGGERS = {
    "text": "ets_twisted.logs.text_log_observer",
    "json": "ets_twisted.logs.json_log_observer",
}


def use_ets_logs(twistd_options: Any, log_format: str) -> None:
    """
    Make twistd log through ETS's observer: set its C{--logger} option,
    unless the operator gave one (it wins). Text goes through it only when
    twistd would write to standard output (no C{--logfile} or C{-}, and
    C{--nodaemon}); with a log file, or C{--syslog}, twistd's own writer
    stays. JSON always goes to standard output. Called while twistd parses
    the options of C{ets}, before it creates its log observer.

    @param twistd_options: twistd's C{ServerOptions} (the parent of the
        C{ets} options), or None (no twistd, e.g. C{ets.tac}).
    """
    if twistd_options is None or twistd_options.get("logger"):
        return
    if log_format == "text":
        to_stdout = twistd_options.get("nodaemon") and twistd_options.get("logfile") in (None, "", "-")
        if not to_stdout or twistd_options.get("syslog"):
            return
    twistd_options["logger"] = LOGGERS[log_format]
