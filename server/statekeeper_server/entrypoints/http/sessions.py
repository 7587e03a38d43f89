"""Browser sessions: a random id in an HttpOnly, SameSite=Strict cookie, held in memory with the
user's bearer token (once logged in) and a CSRF secret that every form posts back.

The token stays on the server: the cookie holds only the session id. Sessions live in memory,
so a server restart logs everyone out; they expire after IDLE_S without use, and at most
MAX_SESSIONS are kept (the least recently used goes first).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

COOKIE = "sk_session"
IDLE_S = 12 * 3600
MAX_SESSIONS = 10_000


@dataclass
class Session:
    id: str
    csrf: str
    token: str | None = None  # the bearer token, once logged in (None: anonymous)
    name: str = ""  # what the login said about the token (its permission)
    used: float = field(default_factory=time.monotonic)
    flashes: list[tuple[str, str]] = field(default_factory=list)  # messages for the next page

    def csrf_ok(self, given: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), given.encode())


class Sessions:
    def __init__(self) -> None:
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.used > IDLE_S:
            del self._by_id[session_id]
            return None
        session.used = now
        self._by_id.move_to_end(session_id)
        return session

    def new(self, token: str | None = None, name: str = "") -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), token, name)
        self._by_id[session.id] = session
        while len(self._by_id) > MAX_SESSIONS:
            self._by_id.popitem(last=False)
        return session

    def drop(self, session: Session) -> None:
        self._by_id.pop(session.id, None)
