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
from .quotas import MAX_UNITS, Profile
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
        help="fault injection, e.g. 'rate=0.2;statuses=429,503;seed=1;jobStartDelay=2;jobStepDelay=0.05'; jobs "
        "refused their storage: 'storageDeniedJobs=2' or 'storageDeniedSeconds=120'",
    )
    p.add_argument("--control-plane", action="store_true", help="enable /_emulator/* (reset, faults, clock)")
    p.add_argument("--oauth", action="store_true", help="also accept Bearer JWTs for https://iothubs.azure.net")
    realism = p.add_argument_group(
        "realistic mode", "the service's throttles, job times and query lag (emulators/iothub/README.md)"
    )
    realism.add_argument("--sku", choices=sorted(MAX_UNITS), help="tier to emulate (default: none, the fast mode)")
    realism.add_argument("--units", type=int, default=1, help="units of that tier (default 1)")
    realism.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="factor on every realistic delay: throttle windows, job times, query lag (0.01 for tests)",
    )
    realism.add_argument(
        "--query-lag",
        type=float,
        default=None,
        help="seconds before a write shows in queries, before --time-scale (default 6 with --sku, else 0)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.sku is None and (args.units != 1 or args.time_scale != 1.0):
        p.error("--units and --time-scale need --sku")
    try:
        profile = Profile(args.sku, args.units, args.time_scale, args.query_lag)
    except ValueError as exc:
        p.error(str(exc))
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
        profile=profile,
    )
    emu.start()
    print(f"IoT Hub emulator '{args.hub_name}' listening on {emu.url}", flush=True)
    print(f"port={emu.port}", flush=True)
    if profile.realistic:
        print(f"realistic mode: {args.sku} x{args.units}, time scale {args.time_scale}", flush=True)
    print(f"CA certificate (trust it with REQUESTS_CA_BUNDLE): {emu.ca_path}", flush=True)
    for name in POLICIES:
        print(f"  {name}: {emu.connection_string(name)}", flush=True)
    wait_until_stopped()
    emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
