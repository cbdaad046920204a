"""A TCP proxy put between a Redis client and Redis: it can cut the link (drop
every connection and refuse new ones for a while), slow it down, or lose
replies: forward a command to Redis, which runs it, then drop the reply and
close the connection, which is what a network blip, ``CLIENT KILL`` or a load
balancer closing an idle socket does at the worst moment. redis-py then
reconnects and sends the command again, so the server runs it twice."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time


class Proxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1", seed: int = 0) -> None:
        self.target_port = target_port
        self.host = host
        self.port = 0
        self._cut_until = 0.0
        self._delay_until = 0.0
        self._delay = 0.0
        self._lose_match = b""
        self._lose_left = 0  #: replies still to lose (counted mode)
        self._lose_rate = 0.0  #: chance per matching command (random mode)
        self._lose_until = 0.0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.replies_lost = 0  #: how many replies were dropped so far
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"proxy->{target_port}", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    # -- controls (called from the harness thread) --------------------------
    def cut(self, seconds: float) -> None:
        """Drop every connection now and refuse new ones for ``seconds``."""
        self._cut_until = time.monotonic() + seconds
        self._loop.call_soon_threadsafe(self._drop_all)

    def slow(self, delay: float, seconds: float) -> None:
        """Hold every chunk for ``delay`` seconds, for the next ``seconds``."""
        self._delay, self._delay_until = delay, time.monotonic() + seconds

    def lose_replies(self, count: int = 1, match: bytes = b"EVALSHA") -> None:
        """The next ``count`` commands containing ``match`` run on Redis; their replies are lost."""
        with self._lock:
            self._lose_match, self._lose_left, self._lose_rate = match, count, 0.0

    def lose_replies_randomly(self, rate: float, seconds: float, match: bytes = b"EVALSHA") -> None:
        """For ``seconds``, lose the reply of each command containing ``match`` with chance ``rate``."""
        with self._lock:
            self._lose_match, self._lose_left, self._lose_rate = match, 0, rate
            self._lose_until = time.monotonic() + seconds

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _should_lose(self, chunk: bytes) -> bool:
        with self._lock:
            if not self._lose_match or self._lose_match not in chunk:
                return False
            if self._lose_left > 0:
                self._lose_left -= 1
                return True
            return time.monotonic() < self._lose_until and self._rng.random() < self._lose_rate

    # -- the event loop -------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._accept, self.host, 0, family=socket.AF_INET))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        # stopped: close what is still open, so no connection task is left pending
        self._drop_all()
        server.close()
        tasks = asyncio.all_tasks(self._loop)
        for t in tasks:
            t.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.close()

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
        losing = asyncio.Event()  # a command whose reply is to be lost went up this connection
        await asyncio.gather(self._pipe(reader, up_writer, losing, upstream=True),
                             self._pipe(up_reader, writer, losing, upstream=False), return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, losing: asyncio.Event, upstream: bool) -> None:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            if time.monotonic() < self._delay_until:
                await asyncio.sleep(self._delay)
            if time.monotonic() < self._cut_until:
                break
            if upstream and not losing.is_set() and self._should_lose(chunk):
                losing.set()
            if not upstream and losing.is_set():
                # the server answered, so the command ran: drop the answer and the connection
                self.replies_lost += 1
                break
            writer.write(chunk)
            await writer.drain()
        writer.transport.abort()
