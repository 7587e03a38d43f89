"""A small HTTP client for the inspector tests: a cookie jar, no automatic redirects (tests look
at them), and helpers for the CSRF field and the login form."""

from __future__ import annotations

import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.cookiejar import CookieJar
from typing import Any


@dataclass
class Reply:
    status: int
    headers: Any
    text: str

    @property
    def location(self) -> str:
        return str(self.headers.get("Location", ""))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Http:
    def __init__(self, base: str, context: ssl.SSLContext | None = None) -> None:
        self.base = base
        self.jar = CookieJar()
        handlers: list[Any] = [urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()]
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self.opener = urllib.request.build_opener(*handlers)

    def request(
        self, method: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Reply:
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        try:
            with self.opener.open(req, timeout=30) as r:
                return Reply(r.status, r.headers, r.read().decode())
        except urllib.error.HTTPError as e:
            return Reply(e.code, e.headers, e.read().decode())

    def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, fields: dict[str, str], headers: dict[str, str] | None = None) -> Reply:
        body = urllib.parse.urlencode(fields).encode()
        return self.request(
            "POST", path, body, {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        )

    def csrf(self, path: str = "/login") -> str:
        match = re.search(r'name="csrf" value="([^"]+)"', self.get(path).text)
        assert match, f"no CSRF field on {path}"
        return match.group(1)

    def login(self, token: str) -> Reply:
        return self.post("/login", {"csrf": self.csrf("/login"), "token": token, "next": "/"})
