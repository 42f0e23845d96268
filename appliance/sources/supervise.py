"""Supervised driver threads: a driver loop that dies is journalled with its exception and run again.

Why: each sensor driver (camera capture and its watchdog, microphone, monitor reader) runs one long loop in
its own thread and handles the failures it expects -- a device that vanishes, a port that closes -- by
reopening. Anything else (a NaN reaching an ``int()``, a library raising a type nobody expected) used to end
the thread without a word: the source stayed down for good while the journal said sources keep retrying. A
supervised loop that raises is logged with its traceback, counted, and started again after an exponential
backoff; the count goes into the bed's health, so a crash loop is visible at the central station instead
of looking like a quiet sensor.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)


class SupervisedThread:
    """Runs ``loop`` in a daemon thread and restarts it when it raises, while ``keep_running()`` is true.

    ``loop`` returning normally ends the thread (a stop was requested, or a file source ended): only an
    exception means "died". ``wait(seconds)`` sleeps between restarts and returns True when the driver is
    being stopped (pass the driver's ``Event.wait``), so a stop never waits out a backoff. The delay doubles
    from ``backoff_s[0]`` up to ``backoff_s[1]`` and starts again from the bottom after a loop that ran
    longer than the longest delay (a crash a day is not a crash loop). ``on_crash(exc)`` runs in the thread
    after each death (the driver's own health bookkeeping); it must not raise.
    """

    def __init__(self, name: str, loop: Callable[[], None], *, keep_running: Callable[[], bool],
                 wait: Callable[[float], bool], backoff_s: tuple[float, float] = (0.1, 5.0),
                 on_crash: Callable[[BaseException], None] | None = None) -> None:
        lo, hi = backoff_s
        if not (0 < lo <= hi and hi < float("inf")):
            raise ValueError(f"SupervisedThread {name!r}: backoff_s must be 0 < first <= max < inf, got {backoff_s!r}")
        self.name = name
        self._loop = loop
        self._keep_running = keep_running
        self._wait = wait
        self._backoff = (float(lo), float(hi))
        self._on_crash = on_crash
        self._lock = threading.Lock()
        self._restarts = 0
        self._last_crash: str | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- the thread surface the drivers (and their tests) use -------------------------------------------
    def start(self) -> "SupervisedThread":
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def restarts(self) -> int:
        """How many times the loop died and was started again."""
        with self._lock:
            return self._restarts

    @property
    def last_crash(self) -> str | None:
        """``Type: message`` of the last exception that ended the loop (None if it never died)."""
        with self._lock:
            return self._last_crash

    # -- supervision -------------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = self._backoff[0]
        while self._keep_running():
            started = time.monotonic()
            try:
                self._loop()
                return
            except BaseException as exc:  # anything: a driver thread must not end because of what it met
                if not self._keep_running():
                    return  # died while being stopped or replaced: nothing to restart
                if time.monotonic() - started > self._backoff[1]:
                    delay = self._backoff[0]
                with self._lock:
                    self._restarts += 1
                    self._last_crash = f"{type(exc).__name__}: {exc}"
                    count = self._restarts
                log.error("%s: driver thread died (%s: %s); restart %d in %.1f s", self.name,
                          type(exc).__name__, exc, count, delay, exc_info=exc)
                if self._on_crash is not None:
                    try:
                        self._on_crash(exc)
                    except Exception:
                        log.exception("%s: crash bookkeeping failed", self.name)
            if self._wait(delay):
                return
            delay = min(delay * 2, self._backoff[1])
