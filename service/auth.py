"""API keys with roles: bearer header for HTTP, a token for the WebSocket; constant-time comparison."""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Forbidden, Unauthorized
from service.settings import APIKey, Role

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[Role]


OPEN = Principal("anonymous", frozenset(("score", "read", "admin")))


class KeyRing:
    """Looks a presented key up among the configured ones, comparing against every key in constant time."""

    def __init__(self, keys: list[APIKey], disabled: bool) -> None:
        self._keys = [(k.name, k.key.get_secret_value().encode(), k.roles) for k in keys]
        self._disabled = disabled

    def identify(self, presented: str | None) -> Principal:
        if self._disabled:
            return OPEN
        if not presented:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        candidate = presented.encode()
        found: Principal | None = None
        for name, secret, roles in self._keys:  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(candidate, secret):
                found = Principal(name, roles)
        if found is None:
            raise Unauthorized("invalid API key")
        return found

    def authorise(self, presented: str | None, role: Role) -> Principal:
        principal = self.identify(presented)
        if role not in principal.roles:
            raise Forbidden(f"key {principal.name!r} lacks the {role!r} role")
        return principal


BEARER = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer <key>`")


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency that admits keys holding ``role`` (documented as bearer security). It runs before a
    route reads its body, so a bad key is answered 401/403 without the body being read. (A key's share of the
    requests in progress is enforced earlier, in :class:`~service.inflight.InflightLimitMiddleware`.)"""

    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(BEARER),  # noqa: B008
    ) -> Principal:
        keyring: KeyRing = request.app.state.keyring
        return keyring.authorise(credentials.credentials if credentials else None, role)

    return dependency


_TOKEN_IN_QUERY = re.compile(r"(token=)[^&\s\"]+")
_BEARER_VALUE = re.compile(r"(?i)(bearer\s+)\S+")


def redact(text: str) -> str:
    return _BEARER_VALUE.sub(r"\1***", _TOKEN_IN_QUERY.sub(r"\1***", text))


class RedactTokens(logging.Filter):
    """Access and WebSocket lines print query strings, where the feed's token may travel; at DEBUG the
    WebSocket handshake prints its headers, the bearer key among them. Both are masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True
