"""A TCP proxy the chaos harness puts between one beat and Redis: it can cut the
link (drop every connection and refuse new ones for a while) or slow it down."""

from __future__ import annotations

import asyncio
import socket
import threading
import time


class Proxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target_port = target_port
        self.host = host
        self.port = 0
        self._cut_until = 0.0
        self._delay_until = 0.0
        self._delay = 0.0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"proxy->{target_port}", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    # -- controls (called from the harness thread) --------------------------
    def cut(self, seconds: float) -> None:
        """Drop every connection now and refuse new ones for ``seconds``."""
        self._cut_until = time.monotonic() + seconds
        self._loop.call_soon_threadsafe(self._drop_all)

    def slow(self, delay: float, seconds: float) -> None:
        """Hold every chunk for ``delay`` seconds, for the next ``seconds``."""
        self._delay, self._delay_until = delay, time.monotonic() + seconds

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # -- the event loop -------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._accept, self.host, 0, family=socket.AF_INET))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def _drop_all(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._cut_until:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            if time.monotonic() < self._delay_until:
                await asyncio.sleep(self._delay)
            if time.monotonic() < self._cut_until:
                break
            writer.write(chunk)
            await writer.drain()
        writer.transport.abort()
