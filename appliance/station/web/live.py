"""Live updates to the browsers: a hub that fans events out to every open server-sent-events stream.

Why server-sent events and not websockets: updates only flow from the station to the page (the one thing a
page sends, a rating, is an ordinary form POST with its CSRF token), SSE is plain HTTP that proxies and TLS
pass unchanged, and the browser's ``EventSource`` reconnects by itself after a network blip.

``publish(event)`` may be called from any thread (the history writer calls it after each commit); delivery
happens on the server's event loop. Each stream has a bounded queue: a page too slow to keep up (or a laptop
that slept) gets one ``resync`` event instead of a backlog, and reloads the current state.
"""
from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

#: Events queued per stream before it is told to resync instead.
STREAM_QUEUE = 2000
#: A comment line this often keeps proxies from closing an idle stream and shows the page the link is alive.
KEEPALIVE_S = 10.0

_CLOSE = object()


@dataclass(eq=False)
class Stream:
    """One browser's stream; ``bed`` set: only events of that bed (``site/bed``) and station-wide ones."""

    bed: str | None
    queue: "asyncio.Queue[Any]" = field(default_factory=lambda: asyncio.Queue(STREAM_QUEUE))
    overflowed: bool = False

    def wants(self, event: dict[str, Any]) -> bool:
        beds = event.get("beds")
        return self.bed is None or beds is None or self.bed in beds


class Hub:
    """Fans events out to streams. ``attach(loop)`` once the server's loop runs; ``close()`` ends every stream."""

    def __init__(self) -> None:
        self._streams: set[Stream] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self.published = 0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, event: dict[str, Any]) -> None:
        """Hand an event to the loop (any thread). ``event['beds']``: the beds it concerns (None: all)."""
        loop = self._loop
        self.published += 1
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._deliver, event)
        except RuntimeError:  # the loop closed between the check and the call (shutdown)
            pass

    def _deliver(self, event: Any) -> None:
        for stream in list(self._streams):
            item = event
            if event is not _CLOSE:
                if not stream.wants(event):
                    continue
                if stream.bed is not None and event.get("beds") is not None:  # a bed page gets only its bed
                    item = {**event, "beds": {stream.bed: event["beds"][stream.bed]}}
            try:
                stream.queue.put_nowait(item)
            except asyncio.QueueFull:
                stream.overflowed = True

    def close(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._deliver, _CLOSE)
            except RuntimeError:
                pass

    async def stream(self, bed: str | None, first: dict[str, Any],
                     disconnected: Callable[[], Any]) -> AsyncIterator[bytes]:
        """The SSE byte stream of one page: ``first`` at once, then every event it wants, until it goes away."""
        stream = Stream(bed)
        with self._lock:
            self._streams.add(stream)
        try:
            yield sse(first)
            while True:
                if stream.overflowed:
                    stream.overflowed = False
                    while not stream.queue.empty():
                        stream.queue.get_nowait()
                    yield sse({"type": "resync"})
                try:
                    event = await asyncio.wait_for(stream.queue.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    if await disconnected():
                        return
                    yield b": keepalive\n\n"
                    continue
                if event is _CLOSE:
                    return
                yield sse(event)
        finally:
            with self._lock:
                self._streams.discard(stream)

    @property
    def streams(self) -> int:
        return len(self._streams)


def sse(event: dict[str, Any]) -> bytes:
    """One SSE message (``data:`` line with compact JSON; the type is inside, so one handler reads all)."""
    return b"data: " + json.dumps(event, separators=(",", ":")).encode("utf-8") + b"\n\n"
