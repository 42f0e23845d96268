"""Bounded echoes of outside text in log lines and error messages.

Why: values that someone else controls -- an MQTT topic a client publishes to, a config value -- end up in
the journal and in one-line errors. Echoed whole, a 60 kB topic writes a 60 kB journal line per message
(log amplification) and a 10,000-character value buries the line that says what is wrong. Every such echo
goes through :func:`cut`: short values read as they are (``repr``), long ones are cut and say their length.
"""
from __future__ import annotations

LIMIT = 80  # characters of the value kept: enough to recognise it, short enough for one journal line


def cut(value: object, limit: int = LIMIT) -> str:
    """``repr(value)`` when short; else its first ``limit`` characters and its length:
    ``'abc…' (60000 chars)`` for text, ``b'ab…' (60000 bytes)`` for bytes, ``[1, 2, …] (repr of 9000 chars)``
    for anything else."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{repr(value[:limit])[:-1]}…{repr(value[:limit])[-1]} ({len(value)} chars)"
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
        if len(data) <= limit:
            return repr(data)
        return f"{repr(data[:limit])[:-1]}…{repr(data[:limit])[-1]} ({len(data)} bytes)"
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… (repr of {len(text)} chars)"
