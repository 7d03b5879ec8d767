"""
A recording upstream in a thread (stdlib C{http.server}) for end-to-end
tests: a real socket the daemon relays to.

Paths: C{/api/stream} sends an event each time the test calls
L{ThreadUpstream.event} and ends on L{ThreadUpstream.end}; C{/api/slow}
answers after C{slow_seconds}; C{/api/big} sends C{big_size} bytes; anything
else echoes what it received as JSON.
"""

from __future__ import annotations

import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ThreadUpstream:
    def __init__(self, big_size: int = 50 * 1024 * 1024, slow_seconds: float = 5) -> None:
        self.received: list[dict[str, Any]] = []
        self.big_size = big_size
        self.slow_seconds = slow_seconds
        self.events: queue.Queue[str | None] = queue.Queue()
        self.stream_broken = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.handle_any()

            def do_POST(self) -> None:
                self.handle_any()

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                upstream.received.append({
                    "method": self.command, "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                })
                route = self.path.split("?")[0]
                if route.endswith("/stream"):
                    return self.stream()
                if route.endswith("/slow"):
                    threading.Event().wait(upstream.slow_seconds)
                if route.endswith("/big"):
                    return self.big()
                data = json.dumps({"path": self.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                try:
                    while True:
                        event = upstream.events.get(timeout=30)
                        if event is None:
                            self.wfile.write(b"0\r\n\r\n")
                            break
                        data = f"data: {event}\n\n".encode()
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    upstream.stream_broken.set()
                self.close_connection = True

            def big(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(upstream.big_size))
                self.end_headers()
                chunk = b"z" * 65536
                left = upstream.big_size
                try:
                    while left > 0:
                        part = chunk[: min(left, len(chunk))]
                        self.wfile.write(part)
                        left -= len(part)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def event(self, text: str) -> None:
        self.events.put(text)

    def end(self) -> None:
        self.events.put(None)

    def close(self) -> None:
        self.end()
        self.server.shutdown()
        self.server.server_close()
