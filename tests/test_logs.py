"""
Log lines out (ets_twisted.logs): the text twistd would write, JSON lines,
and the batching by reactor iteration.
"""

from __future__ import annotations

import io
import json
import threading

from twisted.internet.task import Clock
from twisted.logger import Logger, formatEventAsClassicLogText, formatTime
from twisted.trial.unittest import SynchronousTestCase

from ets_twisted import logs, observe


class FakeReactor(Clock):
    """A Clock that says it is running and keeps its shutdown triggers."""

    running = True

    def __init__(self) -> None:
        super().__init__()
        self.triggers: list = []

    def addSystemEventTrigger(self, phase, event, f):
        self.triggers.append((phase, event, f))


def access_event(when: float) -> dict:
    """The event L{observe.Observer} logs for an access line."""
    events: list = []
    fields = {"method": "GET", "path": "/health", "status": 200}
    line = observe.access_line({
        **fields, "error": "-", "duration_ms": 0.4, "client_ip": "127.0.0.1",
        "request_id": "ab" * 16, "jkt": "-"})
    Logger(namespace="ets.access", observer=events.append).info(
        "{ets_access_line}", ets_access_line=line, ets=fields)
    events[0]["log_time"] = when
    return events[0]


class TextFormatTests(SynchronousTestCase):
    def test_same_text_as_twistd(self):
        """
        Access lines, other events and failures read exactly as twistd's
        own text observer writes them, at any moment of a second.
        """
        events: list = []
        log = Logger(namespace="ets.test", observer=events.append)
        log.info("hello {who}", who="world")
        log.warn("careful")
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("oops")
        events += [access_event(1_800_000_000.0), access_event(1_800_000_000.999)]
        format_event = logs.classic_text_formatter()
        for n, event in enumerate(events):
            event["log_time"] = event.get("log_time", 1_800_000_000 + n + 0.5)
            self.assertEqual(format_event(event), formatEventAsClassicLogText(event, formatTime))
        self.assertIn("[ets.access#info] GET /health 200", format_event(events[-1]))

    def test_time_follows_the_clock(self):
        """The cached timestamp changes with the second."""
        format_event = logs.classic_text_formatter()
        first = format_event(access_event(1_800_000_000.2))
        later = format_event(access_event(1_800_000_001.0))
        self.assertEqual(first[:24], formatTime(1_800_000_000))
        self.assertEqual(later[:24], formatTime(1_800_000_001))
        self.assertNotEqual(first[:24], later[:24])


class BatchingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.out = io.StringIO()
        self.reactor = FakeReactor()
        self.observer = logs.text_log_observer(self.out, self.reactor)
        self.log = Logger(namespace="ets.test", observer=self.observer)

    def test_one_write_per_iteration(self):
        """Lines of one iteration are written together, before the next one."""
        self.log.info("one")
        self.log.info("two")
        self.assertEqual(self.out.getvalue(), "")
        self.reactor.advance(0)
        self.assertEqual([line.split("] ", 1)[1] for line in self.out.getvalue().splitlines()],
                         ["one", "two"])
        self.assertEqual(len(self.reactor.getDelayedCalls()), 0)

    def test_warnings_at_once_in_order(self):
        """A warning is written at once, after the lines logged before it."""
        self.log.info("before")
        self.log.warn("trouble")
        self.assertEqual([line.split("] ", 1)[1] for line in self.out.getvalue().splitlines()],
                         ["before", "trouble"])

    def test_not_running_writes_at_once(self):
        """Before the reactor runs and after it stopped, nothing waits."""
        self.reactor.running = False
        self.log.info("early")
        self.assertIn("early", self.out.getvalue())

    def test_shutdown_writes_the_rest(self):
        """A batch still waiting when the reactor stops is written by the shutdown trigger."""
        self.log.info("last words")
        [(phase, event, flush)] = self.reactor.triggers
        self.assertEqual((phase, event), ("after", "shutdown"))
        flush()
        self.assertIn("last words", self.out.getvalue())

    def test_full_batch_is_written(self):
        """A batch is written once it holds MAX_BATCH lines."""
        for n in range(logs.MAX_BATCH):
            self.log.info("line {n}", n=n)
        self.assertEqual(len(self.out.getvalue().splitlines()), logs.MAX_BATCH)

    def test_other_threads_write_at_once(self):
        """An event from another thread is written by that thread, not batched."""
        thread = threading.Thread(target=lambda: self.log.info("from a thread"))
        thread.start()
        thread.join()
        self.assertIn("from a thread", self.out.getvalue())
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class JsonFormatTests(SynchronousTestCase):
    def test_each_event_is_one_json_line(self):
        """
        The JSON observer writes one parseable object per event, with time,
        level, namespace, message and the structured access fields; a
        failure comes with its traceback inside the same line.
        """
        out = io.StringIO()
        log = Logger(namespace="ets.test", observer=logs.json_log_observer(out, FakeReactor()))
        log.info("hello {who}", who="world", ets={"status": 200, "path": "/x"})
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("oops")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first, second = (json.loads(line) for line in lines)
        self.assertEqual(first["message"], "hello world")
        self.assertEqual((first["level"], first["namespace"]), ("info", "ets.test"))
        self.assertEqual((first["status"], first["path"]), (200, "/x"))
        self.assertRegex(first["time"], r"^\d{4}-\d\d-\d\dT")
        self.assertEqual(second["level"], "critical")
        self.assertIn("ZeroDivisionError", second["traceback"])

    def test_access_line_message(self):
        """An access line's message is the line itself."""
        line = json.loads(logs.event_as_json(access_event(1_800_000_000.0)))
        self.assertTrue(line["message"].startswith("GET /health 200 - 0.4ms client=127.0.0.1"))
        self.assertEqual(line["status"], 200)


class TwistdLoggerTests(SynchronousTestCase):
    def options(self, **given) -> dict:
        return {"logger": None, "nodaemon": True, "logfile": None, "syslog": False, **given}

    def test_json_always(self):
        """LOG_FORMAT=json sets twistd's --logger, even with a log file."""
        for given in ({}, {"nodaemon": False}, {"logfile": "ets.log"}):
            options = self.options(**given)
            logs.use_ets_logs(options, "json")
            self.assertEqual(options["logger"], logs.LOGGERS["json"])

    def test_text_to_standard_output_only(self):
        """Text goes through ETS's writer where twistd would write to standard output."""
        for given, expected in [
            ({}, logs.LOGGERS["text"]),
            ({"logfile": "-"}, logs.LOGGERS["text"]),
            ({"logfile": "/var/log/ets.log"}, None),
            ({"nodaemon": False}, None),
            ({"syslog": True}, None),
        ]:
            options = self.options(**given)
            logs.use_ets_logs(options, "text")
            self.assertEqual(options["logger"], expected, given)

    def test_operator_logger_wins(self):
        for log_format in ("text", "json"):
            mine = self.options(logger="my.observer")
            logs.use_ets_logs(mine, log_format)
            self.assertEqual(mine["logger"], "my.observer")
        logs.use_ets_logs(None, "json")
