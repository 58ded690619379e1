"""Shared access signatures for the app's blobs: least-privilege container SAS for hub jobs, short-lived read links.

SAS for hub jobs are container SAS, least privilege (input: read, list; output: read, write, delete, list as the
import docs require), on per-job containers so a token reaches that job's data only. They are signed with the
account key when there is one, else with a user delegation key obtained with the app's identity (no key at all).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from azure.storage.blob import (
    BlobClient,
    BlobServiceClient,
    ContainerSasPermissions,
    UserDelegationKey,
    generate_blob_sas,
    generate_container_sas,
)


class SasMinter:
    """Signs SAS for one ``BlobServiceClient``, with its account key or a user delegation key."""

    def __init__(self, service: BlobServiceClient, *, lifetime: timedelta = timedelta(hours=24)) -> None:
        self.service = service
        self.lifetime = lifetime
        self._delegation: tuple[UserDelegationKey, datetime] | None = None

    def _has_key(self) -> bool:
        cred = self.service.credential
        return hasattr(cred, "account_key")

    def _delegation_key(self, expiry: datetime) -> UserDelegationKey:
        if self._delegation is None or self._delegation[1] < expiry:
            start = datetime.now(UTC) - timedelta(minutes=5)
            key = self.service.get_user_delegation_key(start, expiry)
            self._delegation = (key, expiry)
        return self._delegation[0]

    def container_sas_url(self, container: str, permission: str, *, lifetime: timedelta | None = None) -> str:
        """A container SAS URL with exactly ``permission`` (e.g. ``"r"`` or ``"rwd"``), valid ``lifetime``."""
        expiry = datetime.now(UTC) + (lifetime or self.lifetime)
        start = datetime.now(UTC) - timedelta(minutes=5)  # tolerate clock skew between us and storage
        perms = ContainerSasPermissions.from_string(permission)
        account = str(self.service.account_name)
        if self._has_key():
            token = generate_container_sas(
                account,
                container,
                account_key=self.service.credential.account_key,
                permission=perms,
                expiry=expiry,
                start=start,
            )
        else:
            token = generate_container_sas(
                account,
                container,
                user_delegation_key=self._delegation_key(expiry),
                permission=perms,
                expiry=expiry,
                start=start,
            )
        return f"{self.service.url.rstrip('/')}/{container}?{token}"

    def container_url(self, container: str) -> str:
        """The plain URL, for ``identityBased`` hub jobs (the hub's own identity reads and writes)."""
        return f"{self.service.url.rstrip('/')}/{container}"

    def blob_read_url(self, blob: BlobClient, lifetime: timedelta = timedelta(hours=1)) -> str:
        """A read-only SAS URL of one blob (or of its snapshot, when the client names one)."""
        expiry = datetime.now(UTC) + lifetime
        kw: dict[str, Any] = {"permission": "r", "expiry": expiry, "snapshot": blob.snapshot}
        if self._has_key():
            kw["account_key"] = self.service.credential.account_key
        else:
            kw["user_delegation_key"] = self._delegation_key(expiry)
        token = generate_blob_sas(str(self.service.account_name), blob.container_name, blob.blob_name, **kw)
        return f"{blob.url}{'&' if '?' in blob.url else '?'}{token}"

    def read_link(self, container: str, name: str, *, lifetime: timedelta = timedelta(minutes=15)) -> str:
        """A short-lived read-only link to one blob (for reports in the HTTP API)."""
        return self.blob_read_url(self.service.get_blob_client(container, name), lifetime)
