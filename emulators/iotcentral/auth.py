"""API tokens of the emulated IoT Central app, and optional Entra ID bearer tokens.

A real API token is an opaque ``SharedAccessSignature sr=<app id>&sig=...&skn=<token name>&se=<expiry, epoch ms>``
string shown once by ``PUT /api/apiTokens/{id}``, bound to a role. The emulator signs its tokens with a fixed,
well-known development key (documented in the README, like Azurite's account key), so the tokens below are
stable across restarts and machines. Never use them for anything but this emulator.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from urllib.parse import quote_plus, unquote

from .model import ApiError

APP_ID = "5b1c5e2a-0d3f-4c36-9a51-000000c0ffee"
DEV_SIGNING_KEY = "aW90LXJlZ2lzdHJ5LWpvYnMtY2VudHJhbC1kZXYta2V5LTAwMDA="
# token name -> role; only roles with the "Data export" permission may use /dataExport.
ROLES = {"operator-token": "App Administrator", "viewer-token": "App Viewer"}
DATA_EXPORT_ROLES = frozenset({"App Administrator", "App Builder"})
FAR_FUTURE_MS = 4102444800000  # 2100-01-01
ENTRA_AUDIENCE = "https://apps.azureiotcentral.com"


def _signature(app_id: str, name: str, expiry_ms: str) -> bytes:
    message = f"{app_id}\n{name}\n{expiry_ms}".encode()
    return hmac.new(base64.b64decode(DEV_SIGNING_KEY), message, hashlib.sha256).digest()


def api_token(name: str = "operator-token", expiry_ms: int = FAR_FUTURE_MS, app_id: str = APP_ID) -> str:
    """The emulator's API token ``name`` (the whole Authorization header value)."""
    sig = quote_plus(base64.b64encode(_signature(app_id, name, str(expiry_ms))).decode())
    return f"SharedAccessSignature sr={app_id}&sig={sig}&skn={name}&se={expiry_ms}"


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "Unauthorized", message)


def authorize(header: str | None, *, oauth: bool) -> str:
    """Check the Authorization header of a data-export request; returns the caller's role.

    Raises:
        ApiError: 401 (missing, malformed, badly signed or expired) or 403 (a role without Data export).
    """
    if not header:
        raise _unauthorized("The request has no Authorization header.")
    if header.startswith("Bearer "):
        if not oauth:
            raise _unauthorized("Bearer tokens are not enabled on this emulator (start it with --oauth).")
        _check_bearer(header.removeprefix("Bearer ").strip())
        return "App Administrator"
    if not header.startswith("SharedAccessSignature "):
        raise _unauthorized("The Authorization header must be 'SharedAccessSignature ...' or 'Bearer ...'.")
    fields = dict(p.partition("=")[::2] for p in header.removeprefix("SharedAccessSignature ").split("&"))
    if any(not fields.get(f) for f in ("sr", "sig", "skn", "se")):
        raise _unauthorized("The API token lacks sr, sig, skn or se.")
    try:
        given = base64.b64decode(unquote(fields["sig"]), validate=True)
    except (binascii.Error, ValueError):
        raise _unauthorized("The API token signature is not valid base64.") from None
    wanted = _signature(fields["sr"], fields["skn"], fields["se"])
    if fields["sr"] != APP_ID or not hmac.compare_digest(given, wanted):
        raise _unauthorized("The API token is not valid for this application.")
    if not fields["se"].isdigit() or int(fields["se"]) < time.time() * 1000:
        raise _unauthorized("The API token has expired.")
    role = ROLES.get(fields["skn"])
    if role is None:
        raise _unauthorized(f"Unknown API token '{fields['skn']}'.")
    if role not in DATA_EXPORT_ROLES:
        raise ApiError(403, "Forbidden", f"The role '{role}' lacks the Data export permission.")
    return role


def _check_bearer(token: str) -> None:
    parts = token.split(".")
    if len(parts) != 3:
        raise _unauthorized("The Bearer token is not a JWT.")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        raise _unauthorized("The Bearer token payload is not readable JSON.") from None
    if str(claims.get("aud", "")).rstrip("/") != ENTRA_AUDIENCE:
        raise _unauthorized(f"The Bearer token audience must be {ENTRA_AUDIENCE}.")
    if float(claims.get("exp", 0)) < time.time():
        raise _unauthorized("The Bearer token has expired.")
