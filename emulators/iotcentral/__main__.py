"""``python -m emulators.iotcentral``: serve a local IoT Central app's data-export API until interrupted."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..iothub.faults import FaultConfig
from ..serving import wait_until_stopped
from .auth import ROLES, api_token
from .server import IoTCentralEmulator


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emulators.iotcentral", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8444, help="port (0 picks a free one; default 8444)")
    p.add_argument("--data-dir", type=Path, default=Path(".iotcentral-emulator"), help="state and TLS files")
    p.add_argument("--tls-dir", type=Path, help="CA and certificate dir to share (e.g. the IoT Hub emulator's)")
    p.add_argument("--page-size", type=int, default=25, help="items per page of a list (default 25)")
    p.add_argument(
        "--faults",
        default=os.environ.get("IOTCENTRAL_EMULATOR_FAULTS", ""),
        help="fault injection, e.g. 'rate=0.2;statuses=429,503;seed=1'",
    )
    p.add_argument("--control-plane", action="store_true", help="enable /_emulator/* (reset, faults, requests)")
    p.add_argument("--oauth", action="store_true", help="also accept Bearer JWTs for https://apps.azureiotcentral.com")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        faults = FaultConfig.parse(args.faults)
    except ValueError as exc:
        p.error(f"--faults: {exc}")
    emu = IoTCentralEmulator(
        args.data_dir,
        host=args.host,
        port=args.port,
        page_size=args.page_size,
        faults=faults,
        control_plane=args.control_plane,
        oauth=args.oauth,
        tls_dir=args.tls_dir,
    )
    emu.start()
    print(f"IoT Central emulator listening on {emu.url}", flush=True)
    print(f"port={emu.port}", flush=True)
    print(f"CA certificate (trust it with REQUESTS_CA_BUNDLE): {emu.ca_path}", flush=True)
    for name, role in ROLES.items():
        print(f"  {name} ({role}): {api_token(name)}", flush=True)
    wait_until_stopped()
    emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
