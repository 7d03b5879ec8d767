"""
The benchmark's streaming upstream (asyncio, no Twisted): what nginx cannot
do on its own.

  GET /api/sse?n=N&gap_ms=G  N server-sent events, G ms apart, chunked; each
                             event's data is time.monotonic_ns() at the
                             moment it is written (a system-wide clock, so
                             the client can subtract it).
  GET /api/big?mib=M         M MiB of zeros with a Content-Length.

    python bench/upstream.py PORT
"""

from __future__ import annotations

import asyncio
import sys
import time
from urllib.parse import parse_qs, urlsplit

CHUNK = b"\0" * (256 * 1024)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode()
            url = urlsplit(target)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path.startswith("/api/sse"):
                n, gap = int(query.get("n", "100")), int(query.get("gap_ms", "10")) / 1000
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
                await writer.drain()
                for _ in range(n):
                    await asyncio.sleep(gap)
                    event = b"data: %d\n\n" % time.monotonic_ns()
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            elif url.path.startswith("/api/big"):
                size = int(query.get("mib", "1024")) * 1024 * 1024
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Content-Length: %d\r\n\r\n" % size)
                sent = 0
                while sent < size:
                    part = CHUNK[: min(len(CHUNK), size - sent)]
                    writer.write(part)
                    sent += len(part)
                    await writer.drain()
            else:
                body = b'{"ok":true}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
