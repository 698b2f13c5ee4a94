"""Who may talk to the server: a Host check on local binds, and an optional bearer token.

DNS rebinding: a web page on ``evil.example`` can make its name resolve to 127.0.0.1 and then
call a server on this machine from the victim's browser, with the Host header still saying
``evil.example``. A server bound to a loopback address therefore answers only requests
whose Host is a local name (``localhost``, ``*.localhost``, ``127.x.x.x``, ``[::1]``) and
refuses the rest with 403.

A bearer token (``--token`` or ``PIXELWISE_TOKEN``) is required on every API path when it
is set, and :func:`check_bind` insists on one before the server listens beyond this machine.
The page ``/`` (static HTML) and ``/healthz`` stay open, so load balancers and the browser
page's login still work; the page sends the token it is given in ``#token=...``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Any

from ..errors import ConfigError
from .uploads import log_rejection

__all__ = ["AccessGuard", "check_bind", "is_loopback"]

OPEN_PATHS = frozenset({"/", "/healthz"})


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``*.localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    host = host.strip().strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    """The name part of a Host header: ``[::1]:8000`` -> ``::1``, ``example.com:80`` -> ``example.com``."""
    value = value.strip()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token (:class:`~pixelwise.errors.ConfigError`)."""
    if not is_loopback(host) and not token:
        raise ConfigError(f"--host {host} accepts connections from other machines, so the server needs a bearer "
                          f"token: pass --token SECRET or set PIXELWISE_TOKEN (e.g. PIXELWISE_TOKEN=$(python -c "
                          f"'import secrets; print(secrets.token_urlsafe(24))')); clients then send "
                          f"'Authorization: Bearer SECRET'. Or serve on 127.0.0.1 behind your own proxy")


class AccessGuard:
    """ASGI middleware: the Host check (when ``bind_host`` is a loopback name) and the bearer token.

    Args:
        app: the ASGI application to protect.
        bind_host: the address the server listens on; ``None`` (any ASGI server, host unknown)
            skips the Host check.
        token: the bearer token; ``None`` or empty: no token is required.
    """

    def __init__(self, app: Any, *, bind_host: str | None, token: str | None) -> None:
        self.app = app
        self.local_only = bind_host is not None and is_loopback(bind_host)
        self.bind_host = bind_host
        self.token = (token or "").encode() or None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.local_only:
            host = headers.get(b"host", b"").decode("latin-1")
            if host and not is_loopback(_host_name(host)):
                await _refuse(scope, send, 403, "forbidden_host",
                              f"Host {host!r} is not a name of this machine; this server listens on "
                              f"{self.bind_host} and answers local names only (DNS rebinding protection). "
                              f"Use http://127.0.0.1 or http://localhost, or start it with --host and --token")
                return
        if self.token is not None and scope.get("path", "") not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            scheme, _, value = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(value.strip(), self.token):
                await _refuse(scope, send, 401, "unauthorized",
                              "this server needs a bearer token: send 'Authorization: Bearer TOKEN' with the "
                              "token it was started with (--token or PIXELWISE_TOKEN)" if not given else
                              "the bearer token is wrong; send the one the server was started with",
                              extra=[(b"www-authenticate", b'Bearer realm="pixelwise"')])
                return
        await self.app(scope, receive, send)


async def _refuse(scope: dict, send: Any, status: int, code: str, message: str, *, extra: list | None = None) -> None:
    log_rejection(scope.get("client"), scope.get("method", ""), scope.get("path", ""), status, code, message)
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
