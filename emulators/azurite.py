"""Start and stop Azurite (the npm package pinned in package.json) on loopback, on free ports or its usual ones."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ACCOUNT = "devstoreaccount1"
USUAL_PORTS = (10000, 10001, 10002)  # Azurite's own defaults (blob, queue, table): what tools expect locally
# Azurite's documented well-known development key (not a secret).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteError(RuntimeError):
    """Azurite is not installed or did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing holds now (the kernel's pick). Under pytest-xdist (``make test`` runs workers in parallel) a
    worker takes only its share of the ports (half the port, as Linux hands out odd ports to ``bind``, modulo the
    worker count is its index): a port picked here is bound later (by a child process), and between the two
    another worker could pick the same one; with disjoint shares it cannot."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    share = (int(worker.removeprefix("gw")), int(count)) if worker.startswith("gw") and count.isdigit() else None
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if share is None or (port // 2) % share[1] == share[0] % share[1]:
            return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on ``port``. As the servers themselves do (Node, http.server), the probe sets
    SO_REUSEADDR: connections of a stopped server lingering in TIME_WAIT do not make its port taken."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Azurite:
    """A running Azurite; ``connection_string`` points clients at it."""

    def __init__(
        self,
        location: Path | None = None,
        *,
        host: str = "127.0.0.1",
        extra_args: tuple[str, ...] = (),
        ports: tuple[int, int, int] | None = None,
    ) -> None:
        """``extra_args`` e.g. ``("--oauth", "basic", "--cert", pem, "--key", key)`` for HTTPS with Bearer tokens.
        ``ports``: the (blob, queue, table) ports to use where they are free (``USUAL_PORTS`` for stable addresses);
        a taken one is replaced by a free one and listed in ``moved``. None: free ports."""
        self.host = host
        self.preferred = ports
        self.moved: list[tuple[str, int, int]] = []  # (service, wanted, got)
        self.extra_args = extra_args
        self.scheme = "https" if "--cert" in extra_args else "http"
        self._owns_location = location is None
        self.location = Path(location or tempfile.mkdtemp(prefix="azurite-"))
        self.location.mkdir(parents=True, exist_ok=True)
        self.blob_port = self.queue_port = self.table_port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        base = f"{self.scheme}://{self.host}"
        return (
            f"DefaultEndpointsProtocol={self.scheme};AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={base}:{self.blob_port}/{ACCOUNT};"
            f"QueueEndpoint={base}:{self.queue_port}/{ACCOUNT};"
            f"TableEndpoint={base}:{self.table_port}/{ACCOUNT};"
        )

    @property
    def blob_endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.blob_port}/{ACCOUNT}"

    def start(self, timeout: float = 60) -> Azurite:
        """Start Azurite and wait until its three services accept connections.

        Raises:
            AzuriteError: not installed (run ``make setup``) or not listening before ``timeout``.
        """
        binary = REPO / "node_modules" / ".bin" / "azurite"
        if not binary.exists():
            raise AzuriteError(f"Azurite is not installed at {binary}: run `make setup` (npm ci).")
        for attempt in range(3):  # a free port can be taken between probing and binding: retry
            self.blob_port, self.queue_port, self.table_port = self._ports(attempt)
            cmd = [
                str(binary),
                "--silent",
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--location",
                str(self.location),
                "--blobHost",
                self.host,
                "--queueHost",
                self.host,
                "--tableHost",
                self.host,
                "--blobPort",
                str(self.blob_port),
                "--queuePort",
                str(self.queue_port),
                "--tablePort",
                str(self.table_port),
                *self.extra_args,
            ]
            log = open(self.location / "azurite.log", "ab")  # noqa: SIM115 - owned by the child process
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._proc.poll() is None:
                if all(_listening(self.host, p) for p in (self.blob_port, self.queue_port, self.table_port)):
                    return self
                time.sleep(0.1)
            self.stop(remove=False)
        raise AzuriteError(f"Azurite did not start; see {self.location / 'azurite.log'}")

    def _ports(self, attempt: int) -> tuple[int, int, int]:
        if self.preferred is None:
            return free_port(), free_port(), free_port()
        self.moved = []
        chosen = []
        for service, wanted in zip(("blob", "queue", "table"), self.preferred, strict=True):
            got = wanted if attempt == 0 and port_is_free(wanted, self.host) else free_port(self.host)
            if got != wanted:
                self.moved.append((service, wanted, got))
            chosen.append(got)
        return chosen[0], chosen[1], chosen[2]

    def stop(self, *, remove: bool = True) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._proc = None
        if remove and self._owns_location:
            shutil.rmtree(self.location, ignore_errors=True)

    def pause(self) -> None:
        """Stop Azurite and keep its data and its ports: storage gone for a while (``resume`` brings it back)."""
        self.stop(remove=False)

    def resume(self, timeout: float = 60) -> Azurite:
        """Start Azurite again on the ports it had, with the data it had.

        Raises:
            AzuriteError: it did not start, or one of its ports was taken meanwhile (its clients could not find it).
        """
        self.preferred = (self.blob_port, self.queue_port, self.table_port)
        self.start(timeout)
        if self.moved:
            self.stop(remove=False)
            raise AzuriteError(f"Azurite could not have its ports back: {self.moved}")
        return self

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
