"""A TCP proxy in front of the test PostgreSQL, for outage tests that must not touch the
shared server: it can drop every connection, refuse new ones, or hold every byte (a hung server
or a network partition: connections stay open, nothing answers)."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tests.conftest import free_port

_CHUNK = 64 * 1024


class DbProxy:
    def __init__(self, database_url: str) -> None:
        parts = urlsplit(database_url)
        query = dict(parse_qsl(parts.query))
        host = query.pop("host", None) or parts.hostname or "127.0.0.1"
        port = int(query.pop("port", None) or parts.port or 5432)
        # the proxy's URL names only the proxy: a host or port left in the query would win
        self._parts = parts._replace(query=urlencode(query))
        # an embedded server (no DATABASE_URL) listens on a Unix socket in its data folder
        self._socket = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0
        self.connections = 0

    @property
    def url(self) -> str:
        """The database URL with the proxy in place of the server."""
        netloc = self._parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        netloc = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
        return urlunsplit(self._parts._replace(netloc=netloc))

    async def start(self) -> DbProxy:
        """Listen, on the port of the first start again after ``refuse`` (the URL names it).
        Not port 0: that is the kernel's range for outgoing connections, and one could take
        the port while the proxy was down."""
        self.port = self.port or free_port()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def refuse(self) -> None:
        """Stop listening: a new connection is refused (the server is down)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def cut(self) -> None:
        """Close every connection open through the proxy (the server restarted)."""
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    def hang(self) -> None:
        """Hold every byte from now on, in both directions; new connections are accepted and
        get no answer."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def stop(self) -> None:
        await self.refuse()
        self.resume()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        await self._flowing.wait()
        try:
            up_reader, up_writer = await (
                asyncio.open_unix_connection(self._socket) if self._socket is not None
                else asyncio.open_connection(*self._target))
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink, (writer, up_writer)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        try:
            while data := await source.read(_CHUNK):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        except (OSError, RuntimeError):
            pass
        finally:
            for end in pair:  # one side gone: the other goes too
                end.close()
                self._writers.discard(end)
