"""
An upstream that misbehaves on purpose, on a real loopback socket: raw
sockets in threads, so it can do what no HTTP server library would.

The last path segment picks the behaviour:

  - C{ok}: C{200} with a small JSON body;
  - C{error}: C{503} with a JSON body (a relayed status);
  - C{reset}: reads the request, then resets the connection (RST);
  - C{garbage}: answers bytes that are not HTTP;
  - C{early}: promises 100 bytes of body, sends 5, closes;
  - C{stall}: sends headers and a first chunk, then stays silent for
    C{stall_seconds} before closing;
  - C{silent}: reads the request and never answers (until C{stall_seconds});
  - C{stream}: server-sent events, C{STREAM_EVENTS} of them 20 ms apart.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
import time

MODES = ("ok", "error", "reset", "garbage", "early", "stall", "silent")
STREAM_EVENTS = 5


class FaultyUpstream:
    def __init__(self, stall_seconds: float = 3.0) -> None:
        self.stall_seconds = stall_seconds
        self.counts = {mode: 0 for mode in MODES}
        self._lock = threading.Lock()
        upstream = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream._handle(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        while True:
            head = b""
            while b"\r\n\r\n" not in head:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return  # an idle kept-alive connection timed out, or was reset
                if not data:
                    return
                head += data
            path = head.split(b" ", 2)[1].split(b"?")[0].decode()
            mode = path.rsplit("/", 1)[-1]
            with self._lock:
                self.counts[mode] = self.counts.get(mode, 0) + 1
            if not self._answer(conn, mode):
                return

    def _answer(self, conn: socket.socket, mode: str) -> bool:
        """Answer one request; whether the connection may be used again."""
        if mode in ("ok", "error"):
            body = b'{"ok":true}' if mode == "ok" else b'{"upstream":"unavailable"}'
            status = b"200 OK" if mode == "ok" else b"503 Service Unavailable"
            conn.sendall(b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (status, len(body), body))
            return True
        if mode == "stream":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            for n in range(STREAM_EVENTS):
                event = b"data: %d\n\n" % n
                conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
                time.sleep(0.02)
            conn.sendall(b"0\r\n\r\n")
            return True
        if mode == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif mode == "garbage":
            conn.sendall(b"\x00\xffTHIS IS NOT HTTP\r\n\r\n")
        elif mode == "early":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nshort")
        elif mode == "stall":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nfirst\r\n")
            time.sleep(self.stall_seconds)
        elif mode == "silent":
            time.sleep(self.stall_seconds)
        conn.close()
        return False
