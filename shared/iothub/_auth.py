"""Credentials for the IoT Hub service API: SharedAccessSignature from a connection string, or Entra ID.

Both produce an ``Authorization`` header value per request and renew it before it expires, so a client that lives
for days (a Functions host) never sends an expired token. Keys and tokens are kept out of ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

ENTRA_SCOPE = "https://iothubs.azure.net/.default"


def parse_connection_string(conn_str: str) -> dict[str, str]:
    """Split ``HostName=...;SharedAccessKeyName=...;SharedAccessKey=...``.

    Raises:
        ValueError: a part is missing; the message names it (and never echoes the key).
    """
    parts: dict[str, str] = {}
    for piece in conn_str.strip().split(";"):
        if not piece.strip():
            continue
        name, sep, value = piece.partition("=")
        if not sep:
            raise ValueError("the IoT Hub connection string is malformed: expected Name=value pairs separated by ';'")
        parts[name.strip()] = value.strip()
    missing = [k for k in ("HostName", "SharedAccessKeyName", "SharedAccessKey") if not parts.get(k)]
    if missing:
        raise ValueError(f"the IoT Hub connection string lacks {', '.join(missing)}")
    try:
        base64.b64decode(parts["SharedAccessKey"], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the SharedAccessKey of the IoT Hub connection string is not base64") from None
    return parts


def sign_sas(resource: str, key: str, policy: str, expiry: int) -> str:
    """A SharedAccessSignature token for ``resource`` (the hub host name), as documented in DOC-SAS."""
    sr = quote_plus(resource.lower())
    digest = hmac.new(base64.b64decode(key), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest()
    sig = quote_plus(base64.b64encode(digest).decode())
    return f"SharedAccessSignature sr={sr}&sig={sig}&se={expiry}&skn={policy}"


class _RenewingToken:
    """Caches one token and fetches a new one ``margin`` seconds before it expires; thread-safe."""

    def __init__(self, margin: float, clock: Callable[[], float]) -> None:
        self.margin = margin
        self.clock = clock
        self._token = ""
        self._expiry = 0.0
        self._lock = threading.Lock()

    def current(self, fetch: Callable[[float], tuple[str, float]]) -> str:
        with self._lock:
            now = self.clock()
            if now >= self._expiry - self.margin:
                self._token, self._expiry = fetch(now)
            return self._token


@dataclass
class SasCredential:
    """Signs tokens with a shared access policy key; a token lives ``ttl`` s and is renewed ``margin`` s early."""

    host: str
    policy: str
    key: str = field(repr=False)
    ttl: int = 3600
    margin: int = 300
    clock: Callable[[], float] = time.time
    _cache: _RenewingToken = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._cache = _RenewingToken(self.margin, self.clock)

    def authorization(self) -> str:
        return self._cache.current(self._sign)

    def _sign(self, now: float) -> tuple[str, float]:
        expiry = int(now) + self.ttl
        return sign_sas(self.host, self.key, self.policy, expiry), float(expiry)


@dataclass
class EntraCredential:
    """Wraps an ``azure-identity`` credential (managed identity in Azure) for ``https://iothubs.azure.net``."""

    credential: Any  # azure.core.credentials.TokenCredential
    scope: str = ENTRA_SCOPE
    margin: int = 300
    clock: Callable[[], float] = time.time
    _cache: _RenewingToken = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._cache = _RenewingToken(self.margin, self.clock)

    def authorization(self) -> str:
        return "Bearer " + self._cache.current(self._fetch)

    def _fetch(self, _now: float) -> tuple[str, float]:
        token = self.credential.get_token(self.scope)
        return token.token, float(token.expires_on)
