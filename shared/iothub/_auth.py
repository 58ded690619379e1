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
from typing import Any, Protocol
from urllib.parse import quote_plus

ENTRA_SCOPE = "https://iothubs.azure.net/.default"


class Credential(Protocol):
    def authorization(self) -> str:
        """The value of the Authorization header for the next request."""
        ...


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


@dataclass
class SasCredential:
    """Signs tokens with a shared access policy key; a token lives ``ttl`` s and is renewed ``margin`` s early."""

    host: str
    policy: str
    key: str = field(repr=False)
    ttl: int = 3600
    margin: int = 300
    clock: Callable[[], float] = time.time
    _token: str = field(default="", repr=False)
    _expiry: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def authorization(self) -> str:
        with self._lock:
            now = self.clock()
            if now >= self._expiry - self.margin:
                self._expiry = int(now) + self.ttl
                self._token = sign_sas(self.host, self.key, self.policy, int(self._expiry))
            return self._token


@dataclass
class EntraCredential:
    """Wraps an ``azure-identity`` credential (managed identity in Azure) for ``https://iothubs.azure.net``."""

    credential: Any  # azure.core.credentials.TokenCredential
    scope: str = ENTRA_SCOPE
    margin: int = 300
    clock: Callable[[], float] = time.time
    _token: str = field(default="", repr=False)
    _expiry: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def authorization(self) -> str:
        with self._lock:
            if self.clock() >= self._expiry - self.margin:
                token = self.credential.get_token(self.scope)
                self._token, self._expiry = token.token, float(token.expires_on)
            return f"Bearer {self._token}"
