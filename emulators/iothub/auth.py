"""Authentication of service requests: SharedAccessSignature tokens of the hub's shared access policies.

The policies and their rights are the defaults every IoT hub is created with (DOC-SAS). Their keys are fixed,
well-known development keys, like Azurite's account key: never use them for anything but a local emulator.
Optionally (``oauth=True``) a Bearer JWT for ``https://iothubs.azure.net`` is accepted without checking its
signature, the way Azurite's ``--oauth basic`` does, so clients using ``azure-identity`` can be exercised locally.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote_plus, unquote

from .errors import AuthError


class Right(StrEnum):
    REGISTRY_READ = "RegistryRead"
    REGISTRY_WRITE = "RegistryWrite"
    SERVICE_CONNECT = "ServiceConnect"
    DEVICE_CONNECT = "DeviceConnect"


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    key: str
    rights: frozenset[Right]


_ALL = frozenset(Right)
# Well-known development keys (documented in emulators/iothub/README.md). Not secrets.
POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy("iothubowner", "EtFfipxWXHC/EsQvFkvCMtUEqKf29XjHDRGXo+ytfm0=", _ALL),
        Policy("service", "s5Oe8dizFT7C3jqdEqnIexbk4uvlXWzp+HET+4TL0FA=", frozenset({Right.SERVICE_CONNECT})),
        Policy("device", "OVk7RgIVxr9r8YVZPRU8w+BQleUxEdkkabOgU55AUw8=", frozenset({Right.DEVICE_CONNECT})),
        Policy("registryRead", "GiZXnTHvwfXKv9r+nfm7Bjur6LVzbTa0N81/5Qx7OpE=", frozenset({Right.REGISTRY_READ})),
        Policy(
            "registryReadWrite",
            "frvcSQHB+mxufggZlW+aS7KTfYu/WT1+hTl1ckdQmjs=",
            frozenset({Right.REGISTRY_READ, Right.REGISTRY_WRITE}),
        ),
    )
}

ENTRA_AUDIENCE = "https://iothubs.azure.net"


def connection_string(host: str, policy: str = "iothubowner") -> str:
    """The service connection string of ``policy`` for a hub served at ``host`` (``name:port``)."""
    return f"HostName={host};SharedAccessKeyName={policy};SharedAccessKey={POLICIES[policy].key}"


def sign(resource: str, key: str, expiry: int, policy: str | None = None) -> str:
    """Build a SharedAccessSignature token (the same algorithm as the SDKs)."""
    sr = quote_plus(resource)
    digest = hmac.new(base64.b64decode(key), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest()
    sig = quote_plus(base64.b64encode(digest).decode())
    token = f"SharedAccessSignature sr={sr}&sig={sig}&se={expiry}"
    return f"{token}&skn={policy}" if policy else token


def authorize(header: str | None, *, host: str, path: str, needed: Right, oauth: bool = False) -> str:
    """Check an ``Authorization`` header for a request to ``host``+``path`` needing ``needed``.

    Returns the name of the principal (policy name, or ``entra``).

    Raises:
        AuthError: missing, malformed, badly signed, expired, wrong audience or insufficient rights.
    """
    if not header:
        raise AuthError("The request has no Authorization header.")
    if header.startswith("Bearer "):
        if not oauth:
            raise AuthError("Bearer tokens are not enabled on this emulator (start it with --oauth).")
        _check_bearer(header.removeprefix("Bearer ").strip())
        return "entra"
    if not header.startswith("SharedAccessSignature "):
        raise AuthError("The Authorization header is not a SharedAccessSignature token.")
    fields: dict[str, str] = {}
    for part in header.removeprefix("SharedAccessSignature ").strip().split("&"):
        name, _, value = part.partition("=")
        fields[name.strip()] = value.strip()
    missing = [f for f in ("sr", "sig", "se", "skn") if not fields.get(f)]
    if missing:
        raise AuthError(f"The SharedAccessSignature token lacks {', '.join(missing)}.")
    policy = POLICIES.get(fields["skn"])
    if policy is None:
        raise AuthError(f"Unknown shared access policy '{fields['skn']}'.")
    try:
        expiry = int(fields["se"])
    except ValueError:
        raise AuthError("The token expiry 'se' is not a number.") from None
    # The signature covers the resource URI exactly as it appears (URL-encoded) in the token.
    expected = hmac.new(base64.b64decode(policy.key), f"{fields['sr']}\n{expiry}".encode(), hashlib.sha256).digest()
    try:
        given = base64.b64decode(unquote(fields["sig"]), validate=True)
    except (binascii.Error, ValueError):
        raise AuthError("The token signature is not valid base64.") from None
    if not hmac.compare_digest(expected, given):
        raise AuthError("The token signature is invalid.")
    if expiry < time.time():
        raise AuthError("The SharedAccessSignature token has expired.")
    resource = unquote(fields["sr"]).lower().removeprefix("https://").rstrip("/")
    target = (host + path).lower()
    if target != resource and not target.startswith(resource + "/"):
        raise AuthError(f"The token audience '{resource}' does not match this hub '{host}'.")
    if needed not in policy.rights:
        raise AuthError(
            f"Policy '{policy.name}' does not grant {needed}; use a policy with {needed} "
            "(for example registryReadWrite or iothubowner).",
            code=401003,
        )
    return policy.name


def _check_bearer(token: str) -> None:
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthError("The Bearer token is not a JWT.")
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, binascii.Error):
        raise AuthError("The Bearer token payload is not readable JSON.") from None
    if str(claims.get("aud", "")).rstrip("/") != ENTRA_AUDIENCE:
        raise AuthError(f"The Bearer token audience must be {ENTRA_AUDIENCE}.")
    if float(claims.get("exp", 0)) < time.time():
        raise AuthError("The Bearer token has expired.")
