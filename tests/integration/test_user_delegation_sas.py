"""User delegation SAS (no account key: the app's identity signs) against Azurite with OAuth over HTTPS."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobClient, BlobServiceClient, ContainerClient

from emulators.azurite import Azurite
from emulators.tls import TlsFiles, ensure_certificates
from shared.storage import Storage


class FakeEntraToken:
    """Azurite's `--oauth basic` checks audience, issuer and expiry, not the signature (documented)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        exp = int(time.time()) + 3600
        claims = {
            "aud": "https://storage.azure.com",
            "iss": "https://sts.windows.net/00000000-0000-0000-0000-000000000001/",
            "exp": exp,
            "nbf": exp - 7200,
            "iat": exp - 7200,
            "oid": "11111111-1111-1111-1111-111111111111",
            "tid": "00000000-0000-0000-0000-000000000001",
        }

        def enc(d: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

        return AccessToken(f"{enc({'alg': 'none', 'typ': 'JWT'})}.{enc(claims)}.c2ln", exp)


@pytest.fixture(scope="module")
def oauth_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Azurite, TlsFiles]]:
    tls = ensure_certificates(tmp_path_factory.mktemp("azurite-tls"))
    server = Azurite(
        tmp_path_factory.mktemp("azurite-oauth"),
        extra_args=("--oauth", "basic", "--cert", str(tls.cert_path), "--key", str(tls.key_path)),
    ).start()
    yield server, tls
    server.stop()


def test_user_delegation_sas_is_least_privilege(oauth_azurite: tuple[Azurite, TlsFiles]) -> None:
    server, tls = oauth_azurite
    ca = str(tls.ca_path)
    service = BlobServiceClient(server.blob_endpoint, credential=FakeEntraToken(), connection_verify=ca)
    store = Storage(service)
    store.ensure_container("udsas")
    store.upload_bytes("udsas", "devices.txt", b'{"id":"d1","status":"enabled"}\n')
    url = store.sas.container_sas_url("udsas", "rl")
    assert "skoid=" in url  # signed with a user delegation key, not an account key
    reader = ContainerClient.from_container_url(url, connection_verify=ca)
    assert reader.get_blob_client("devices.txt").download_blob().readall().startswith(b'{"id":"d1"')
    with pytest.raises(HttpResponseError) as denied:
        reader.get_blob_client("other.txt").upload_blob(b"x")
    assert denied.value.status_code == 403
    link = store.sas.read_link("udsas", "devices.txt")
    assert "skoid=" in link and "sp=r" in link
    assert BlobClient.from_blob_url(link, connection_verify=ca).download_blob().readall().startswith(b'{"id":"d1"')
