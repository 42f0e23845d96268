"""Who may use the web station: users with argon2id password hashes, and the browser sessions of those logged in.

Why argon2id (``argon2-cffi``): the password hash recommended by OWASP, memory-hard, with the parameters kept in
the hash itself so they can be raised later (a hash with old parameters is upgraded at the next login). The
user file is SQLite through ``appliance.storage.StateFile`` (healed like every state file) and is written 0600.

Sessions live in memory: a random 256-bit token in an HttpOnly, SameSite=Strict cookie (Secure under TLS),
with an idle timeout of one shift; a station restart logs everyone out, which costs a login, never a rating.
Each session carries its own CSRF token for the forms. Repeated wrong passwords for one name are slowed down
(a short lockout), so a password cannot be guessed at the speed of the network.
"""
from __future__ import annotations

import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from appliance.storage import Salvage, StateFile, restore_tables

#: User names: what the rating records as the rater (the device takes up to 200 characters; 64 is plenty).
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_PASSWORD_LEN = 10
#: A session unused for this long ends (one 12-hour shift).
SESSION_IDLE_S = 12 * 3600.0
#: After this many wrong passwords for one name within LOCKOUT_S, that name is refused for LOCKOUT_S.
MAX_FAILURES = 5
LOCKOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, hash TEXT NOT NULL, created REAL NOT NULL,
                                  changed REAL NOT NULL);
"""
_TABLES = {"users": ("name", "hash", "created", "changed")}


class UserError(ValueError):
    """A refused user operation; the message names the field."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not USER_NAME.fullmatch(name):
        raise UserError(f"user name: {name!r:.80} is not 1-64 characters of letters, digits and ._@- "
                        f"starting with a letter or digit")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LEN:
        raise UserError(f"password: {len(password)} characters, at least {MIN_PASSWORD_LEN} are needed")
    if password != password.strip():
        raise UserError("password: starts or ends with white space (a pasted line end?)")
    return password


def _restore(db: sqlite3.Connection, salvage: Salvage) -> str:
    return restore_tables(db, salvage, _TABLES)


class UserStore:
    """The users file (``users.sqlite3`` in the station's state directory)."""

    def __init__(self, path: str | Path, *, hasher: PasswordHasher | None = None) -> None:
        self.path = Path(path)
        self._hasher = hasher or PasswordHasher()
        self._file = StateFile(self.path, what="station users", prepare=lambda db: db.executescript(_SCHEMA),
                               tables=_TABLES, restore=_restore, heal=True)
        for p in (self.path, self.path.with_name(self.path.name + "-wal"), self.path.with_name(self.path.name + "-shm")):
            if p.exists():
                os.chmod(p, 0o600)
        # Verified against when the name is unknown, so an unknown name takes as long as a wrong password.
        self._dummy = self._hasher.hash(secrets.token_hex(16))

    def close(self) -> None:
        self._file.close()

    def names(self) -> list[str]:
        return [r[0] for r in self._file.run(lambda db: db.execute("SELECT name FROM users ORDER BY name").fetchall())]

    def add(self, name: str, password: str) -> None:
        name, digest = check_name(name), self._hasher.hash(check_password(password))
        now = time.time()

        def run(db: sqlite3.Connection) -> None:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise UserError(f"user {name!r} exists already (use `neopain station user passwd {name}`)")
            db.execute("INSERT INTO users VALUES (?, ?, ?, ?)", (name, digest, now, now))

        self._file.run(run)

    def set_password(self, name: str, password: str) -> None:
        name, digest = check_name(name), self._hasher.hash(check_password(password))
        changed = self._file.run(lambda db: db.execute("UPDATE users SET hash = ?, changed = ? WHERE name = ?",
                                                       (digest, time.time(), name)).rowcount)
        if not changed:
            raise UserError(f"user {name!r}: no such user (add it with `neopain station user add {name}`)")

    def remove(self, name: str) -> None:
        if not self._file.run(lambda db: db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount):
            raise UserError(f"user {name!r}: no such user")

    def verify(self, name: str, password: str) -> bool:
        """True when ``password`` is ``name``'s; upgrades an old-parameter hash on success."""
        row = self._file.run(lambda db: db.execute("SELECT hash FROM users WHERE name = ?", (name,)).fetchone())
        digest = row[0] if row else self._dummy
        try:
            self._hasher.verify(digest, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        if row is None:
            return False
        if self._hasher.check_needs_rehash(digest):
            new = self._hasher.hash(password)
            self._file.run(lambda db: db.execute("UPDATE users SET hash = ? WHERE name = ?", (new, name)))
        return True


@dataclass
class Session:
    user: str
    csrf: str
    last_used: float


class Sessions:
    """Logged-in browsers by cookie token, and the wrong-password counts per name."""

    def __init__(self, *, idle_s: float = SESSION_IDLE_S) -> None:
        self._idle_s = idle_s
        self._sessions: dict[str, Session] = {}
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def open(self, user: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(24), time.monotonic())
        with self._lock:
            self._sessions[token] = session
            self._failures.pop(user, None)
        return token, session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return None
            if now - session.last_used > self._idle_s:
                del self._sessions[token]
                return None
            session.last_used = now
            return session

    def close(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)

    def locked_out(self, name: str) -> bool:
        """True while ``name`` has had MAX_FAILURES wrong passwords within the last LOCKOUT_S."""
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._failures.get(name, []) if now - t < LOCKOUT_S]
            self._failures[name] = recent
            return len(recent) >= MAX_FAILURES

    def failed(self, name: str) -> None:
        with self._lock:
            self._failures.setdefault(name, []).append(time.monotonic())
            if len(self._failures) > 10_000:  # bounded: a flood of invented names cannot grow this forever
                self._failures.clear()
