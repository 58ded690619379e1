"""``python -m emulators.functions_host``: serve function_app.py locally (see host.py for what it emulates)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .host import FUNCTION_KEY, MASTER_KEY, FunctionsHost, StopSignal, load_settings, wait_forever


class _Quiet(logging.Filter):
    """The Azure SDKs log every request at INFO (URLs, headers): keep them at WARNING, as host.json does."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("azure") or record.levelno >= logging.WARNING


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emulators.functions_host", description=__doc__)
    p.add_argument("--settings", default="local.settings.json", help="a local.settings.json (its Values)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7071)
    p.add_argument("--function-key", default=FUNCTION_KEY)
    p.add_argument("--master-key", default=MASTER_KEY)
    p.add_argument("--blob-poll", type=float, default=2.0, help="seconds between scans of blob-trigger containers")
    p.add_argument("--no-timers", action="store_true", help="fire timers only through POST /admin/functions/<name>")
    p.add_argument(
        "--crash-at",
        metavar="STEP",
        help="exit abruptly (code 86) right after this pipeline step: validated, accepted, claimed, submitted, "
        "running, harvested (crash-safety tests)",
    )
    args = p.parse_args(argv)
    handler = logging.StreamHandler()
    handler.addFilter(_Quiet())
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=[handler]
    )
    # The process environment wins over the file, so a test or a shell can override one setting.
    for key, value in load_settings(args.settings).items():
        os.environ.setdefault(key, value)
    sys.path.insert(0, os.getcwd())
    if args.crash_at:
        from shared import engine

        def crash(step: str) -> None:
            if step == args.crash_at:
                logging.getLogger("functions_host").warning("crash-at %s: exiting now", step)
                logging.shutdown()
                os._exit(86)

        engine.CHECKPOINTS.append(crash)
    stop = StopSignal().install()  # before serving: a stop sent as soon as /api/health answers is not lost
    host = FunctionsHost(
        host=args.host,
        port=args.port,
        function_key=args.function_key,
        master_key=args.master_key,
        blob_poll_seconds=args.blob_poll,
        timers=not args.no_timers,
    ).start()
    print(f"Functions host listening on {host.url}", flush=True)
    for line in host.describe():
        print(f"  {line}", flush=True)
    wait_forever(host, stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
