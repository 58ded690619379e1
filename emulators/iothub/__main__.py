"""``python -m emulators.iothub``: serve a local IoT hub until interrupted."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..serving import wait_until_stopped
from .auth import POLICIES
from .faults import FaultConfig
from .server import IoTHubEmulator


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emulators.iothub", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8443, help="port (0 picks a free one; default 8443)")
    p.add_argument("--data-dir", type=Path, default=Path(".iothub-emulator"), help="registry, jobs and TLS files")
    p.add_argument("--hub-name", default="devhub")
    p.add_argument(
        "--storage-identity",
        default=os.environ.get("IOTHUB_EMULATOR_STORAGE_IDENTITY"),
        help="storage connection string standing in for the hub's managed identity (identityBased jobs)",
    )
    p.add_argument(
        "--faults",
        default=os.environ.get("IOTHUB_EMULATOR_FAULTS", ""),
        help="fault injection, e.g. 'rate=0.2;statuses=429,503;seed=1;jobStartDelay=2;jobStepDelay=0.05'",
    )
    p.add_argument("--control-plane", action="store_true", help="enable /_emulator/* (reset, faults, clock)")
    p.add_argument("--oauth", action="store_true", help="also accept Bearer JWTs for https://iothubs.azure.net")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    # The storage SDK logs every request at INFO, with URLs: keep it to warnings.
    logging.getLogger("azure").setLevel(logging.WARNING)
    try:
        faults = FaultConfig.parse(args.faults)
    except ValueError as exc:
        p.error(f"--faults: {exc}")
    emu = IoTHubEmulator(
        args.data_dir,
        host=args.host,
        port=args.port,
        hub_name=args.hub_name,
        storage_identity=args.storage_identity,
        faults=faults,
        control_plane=args.control_plane,
        oauth=args.oauth,
    )
    emu.start()
    print(f"IoT Hub emulator '{args.hub_name}' listening on {emu.url}", flush=True)
    print(f"port={emu.port}", flush=True)
    print(f"CA certificate (trust it with REQUESTS_CA_BUNDLE): {emu.ca_path}", flush=True)
    for name in POLICIES:
        print(f"  {name}: {emu.connection_string(name)}", flush=True)
    wait_until_stopped()
    emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
