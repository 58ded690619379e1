"""Credentials for the IoT Central REST API: an API token, or Entra ID for ``https://apps.azureiotcentral.com``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..iothub import EntraCredential

ENTRA_SCOPE = "https://apps.azureiotcentral.com/.default"


@dataclass(frozen=True)
class ApiTokenCredential:
    """An IoT Central API token: the whole ``SharedAccessSignature sr=...&sig=...&skn=...&se=...`` value.

    API tokens cannot be renewed by the client (they live about a year and are shown once); ``expired`` says when
    one has expired, so the settings check can name it instead of the service answering 401 later.
    """

    token: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.token.startswith("SharedAccessSignature "):
            raise ValueError(
                "an IoT Central API token starts with 'SharedAccessSignature sr=' (copy the whole value that "
                "'Create API token' shows once)"
            )

    @property
    def expires(self) -> float | None:
        """Expiry in seconds since the epoch (``se`` is in milliseconds), or None if the token has no ``se``."""
        for part in self.token.removeprefix("SharedAccessSignature ").split("&"):
            name, _, value = part.partition("=")
            if name == "se" and value.isdigit():
                return int(value) / 1000
        return None

    @property
    def expired(self) -> bool:
        expires = self.expires
        return expires is not None and expires < time.time()

    def authorization(self) -> str:
        return self.token


def entra_credential(credential: Any) -> EntraCredential:
    """Wrap an ``azure-identity`` credential (managed identity in Azure) for IoT Central."""
    return EntraCredential(credential, scope=ENTRA_SCOPE)
