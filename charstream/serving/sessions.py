"""Sessions: a stream's `State` kept by the server between requests.

**The contract** (tested in `tests/test_sessions.py`): a session is the state
after reading, in order, every character of the prompts and completions of the
requests made in it that ended whole (`finish_reason` "length" or "stop"; a
completion ended by a stop string counts its stop string, which the stream did
read). So the text of request k equals, bit for bit, what a fresh native
generator gives with the prime `prompt_1 + completion_1 + ... + prompt_k` and
request k's settings and seed; an empty prompt continues straight from the
last completion. A request that did not end whole (cancelled, stalled, shut
down) leaves its session as it was. One request at a time per session: a
second is refused (409) while the first runs.

**Stores**, one interface (`Store`): `SqliteStore`, embedded, a file in WAL
mode (or `:memory:`), and `RedisStore`, for several server processes behind one
load balancer. A state is written when its request ends, in one transaction
(SQLite) or one MULTI/EXEC (Redis): a server killed with SIGKILL loses no
session whose request had finished. Bounded by a time to live since last use
and a count, the least recently used evicted first. A record holds the state,
the model's fingerprint, the length, the times, and the text only when asked
(`keep_text`): continuation needs the state, not the text.

Ids are `secrets.token_urlsafe(24)`: 192 random bits, never a path.
"""
from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
import sqlite3
import time

ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


def new_id() -> str:
    return secrets.token_urlsafe(24)


def valid_id(value) -> bool:
    return isinstance(value, str) and ID.fullmatch(value) is not None


@dataclasses.dataclass(frozen=True)
class Record:
    """What a store keeps of one session."""

    id: str
    state: bytes | None         # `State.to_bytes()`; None before its first request ends
    fingerprint: str
    chars: int
    created: float
    last_used: float
    text: str | None = None     # only with keep_text


class Busy(Exception):
    """The session serves another request."""


class Store:
    """What the server needs of a session store; every method is a coroutine,
    and `close` ends it. `ttl` seconds since last use and `max_sessions` bound it."""

    ttl: float
    max_sessions: int
    keep_text: bool

    async def create(self, fingerprint: str, state: bytes | None = None, chars: int = 0,
                     text: str | None = None) -> Record: ...
    async def get(self, sid: str) -> Record | None: ...
    async def save(self, sid: str, state: bytes, chars: int, text: str | None) -> bool: ...
    async def delete(self, sid: str) -> bool: ...
    async def acquire(self, sid: str, lease: float) -> bool: ...
    async def release(self, sid: str) -> None: ...
    async def count(self) -> int: ...
    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, state BLOB, chars INTEGER NOT NULL,
    created REAL NOT NULL, last_used REAL NOT NULL, busy_until REAL NOT NULL DEFAULT 0,
    text TEXT);
CREATE INDEX IF NOT EXISTS sessions_last_used ON sessions (last_used);
"""


class SqliteStore(Store):
    """Sessions in one SQLite file (WAL mode, synchronous NORMAL: a commit
    survives the process being killed; a power cut may lose the last ones).

    The calls are short and local (tens of microseconds), so they run on the
    event loop; a lock keeps them one at a time.
    """

    def __init__(self, path: str, ttl: float, max_sessions: int, keep_text: bool = False):
        self.path, self.ttl, self.max_sessions, self.keep_text = path, ttl, max_sessions, keep_text
        try:
            self.db = sqlite3.connect(path, timeout=10, isolation_level=None,
                                      check_same_thread=False)
            self._setup(path)
        except sqlite3.Error as err:
            raise ValueError(f"{path}: cannot open the session store ({err})") from None
        self._lock = asyncio.Lock()

    def _setup(self, path: str) -> None:
        """WAL mode and the schema. Several workers open one new file at once,
        and switching to WAL takes the file alone without waiting: retried."""
        for attempt in range(100):
            try:
                if path != ":memory:":
                    self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(_SCHEMA)
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or attempt == 99:
                    raise
                time.sleep(0.05)

    def _expire(self, now: float) -> None:
        self.db.execute("DELETE FROM sessions WHERE last_used < ?", (now - self.ttl,))

    def _evict(self) -> None:
        self.db.execute(
            "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions ORDER BY last_used DESC "
            "LIMIT -1 OFFSET ?)", (self.max_sessions,))

    async def create(self, fingerprint, state=None, chars=0, text=None) -> Record:
        now, sid = time.time(), new_id()
        async with self._lock:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self._expire(now)
                self.db.execute("INSERT INTO sessions (id, fingerprint, state, chars, created, "
                                "last_used, text) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (sid, fingerprint, state, chars, now, now,
                                 text if self.keep_text else None))
                self._evict()
        return Record(sid, state, fingerprint, chars, now, now, text if self.keep_text else None)

    async def get(self, sid) -> Record | None:
        async with self._lock:
            row = self.db.execute(
                "SELECT id, state, fingerprint, chars, created, last_used, text FROM sessions "
                "WHERE id = ? AND last_used >= ?", (sid, time.time() - self.ttl)).fetchone()
        return None if row is None else Record(*row)

    async def save(self, sid, state, chars, text) -> bool:
        now = time.time()
        async with self._lock:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                cur = self.db.execute(
                    "UPDATE sessions SET state = ?, chars = ?, last_used = ?, "
                    "text = CASE WHEN ? THEN coalesce(text, '') || ? ELSE NULL END "
                    "WHERE id = ?", (state, chars, now, self.keep_text, text or "", sid))
        return cur.rowcount == 1

    async def delete(self, sid) -> bool:
        async with self._lock:
            with self.db:
                cur = self.db.execute("DELETE FROM sessions WHERE id = ?", (sid,))
        return cur.rowcount == 1

    async def acquire(self, sid, lease) -> bool:
        """Mark the session busy for up to `lease` seconds, unless it is already."""
        now = time.time()
        async with self._lock:
            with self.db:
                cur = self.db.execute(
                    "UPDATE sessions SET busy_until = ? WHERE id = ? AND busy_until < ?",
                    (now + lease, sid, now))
        return cur.rowcount == 1

    async def release(self, sid) -> None:
        async with self._lock:
            with self.db:
                self.db.execute("UPDATE sessions SET busy_until = 0 WHERE id = ?", (sid,))

    async def count(self) -> int:
        async with self._lock:
            return self.db.execute("SELECT count(*) FROM sessions WHERE last_used >= ?",
                                   (time.time() - self.ttl,)).fetchone()[0]

    async def close(self) -> None:
        self.db.close()


class RedisStore(Store):
    """Sessions in Redis: a hash per session with the store's time to live
    (EXPIRE, renewed on use), a sorted set by last use for the count bound, and
    a busy key per running request (SET NX with the lease as its expiry), so
    that several server processes share sessions safely."""

    def __init__(self, url: str, ttl: float, max_sessions: int, keep_text: bool = False):
        try:
            import redis.asyncio as redis
        except ImportError as err:
            raise ValueError(f"redis sessions need the redis client: pip install "
                             f"\"charstream[serve]\" ({err})") from None
        self.url, self.ttl, self.max_sessions, self.keep_text = url, ttl, max_sessions, keep_text
        self.redis = redis.Redis.from_url(url)
        self._ttl = max(1, int(ttl))

    @staticmethod
    def _key(sid: str) -> str:
        return f"charstream:session:{sid}"

    def _trim(self, pipe, now: float) -> None:
        pipe.zremrangebyscore("charstream:sessions", "-inf", now - self.ttl)

    async def _evict(self) -> None:
        extra = await self.redis.zcard("charstream:sessions") - self.max_sessions
        if extra > 0:
            old = await self.redis.zrange("charstream:sessions", 0, extra - 1)
            if old:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.delete(*(k for s in old for k in (self._key(s.decode()),
                                                             f"{self._key(s.decode())}:text")))
                    pipe.zrem("charstream:sessions", *old)
                    await pipe.execute()

    async def create(self, fingerprint, state=None, chars=0, text=None) -> Record:
        now, sid = time.time(), new_id()
        fields = {"fingerprint": fingerprint, "chars": chars, "created": now, "last_used": now}
        if state is not None:
            fields["state"] = state
        async with self.redis.pipeline(transaction=True) as pipe:
            self._trim(pipe, now)
            pipe.hset(self._key(sid), mapping=fields)
            pipe.expire(self._key(sid), self._ttl)
            if self.keep_text and text:
                pipe.set(f"{self._key(sid)}:text", text, ex=self._ttl)
            pipe.zadd("charstream:sessions", {sid: now})
            await pipe.execute()
        await self._evict()
        return Record(sid, state, fingerprint, chars, now, now,
                      text if self.keep_text else None)

    async def get(self, sid) -> Record | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._key(sid))
            pipe.get(f"{self._key(sid)}:text")
            found, text = await pipe.execute()
        if not found or b"fingerprint" not in found:
            return None
        return Record(sid, found.get(b"state"), found[b"fingerprint"].decode(),
                      int(found[b"chars"]), float(found[b"created"]),
                      float(found[b"last_used"]), None if text is None else text.decode())

    async def save(self, sid, state, chars, text) -> bool:
        now, key = time.time(), self._key(sid)
        if not await self.redis.exists(key):
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"state": state, "chars": chars, "last_used": now})
            pipe.expire(key, self._ttl)
            if self.keep_text and text:
                pipe.append(f"{key}:text", text)   # appended where it is: no read-modify-write
                pipe.expire(f"{key}:text", self._ttl)
            pipe.zadd("charstream:sessions", {sid: now})
            await pipe.execute()
        return True

    async def delete(self, sid) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(sid), f"{self._key(sid)}:text")
            pipe.zrem("charstream:sessions", sid)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def acquire(self, sid, lease) -> bool:
        return bool(await self.redis.set(f"{self._key(sid)}:busy", 1, nx=True,
                                         px=max(1, int(lease * 1000))))

    async def release(self, sid) -> None:
        await self.redis.delete(f"{self._key(sid)}:busy")

    async def count(self) -> int:
        now = time.time()
        await self.redis.zremrangebyscore("charstream:sessions", "-inf", now - self.ttl)
        return await self.redis.zcard("charstream:sessions")

    async def close(self) -> None:
        await self.redis.aclose()


def open_store(where: str, ttl: float, max_sessions: int, keep_text: bool = False) -> Store:
    """`redis://...` for Redis, anything else a SQLite path (`:memory:` included)."""
    if where.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(where, ttl, max_sessions, keep_text)
    return SqliteStore(where, ttl, max_sessions, keep_text)
