"""``python -m emulators.eventgrid --storage <connection string> --container uploads --endpoint <webhook URL>``"""

from __future__ import annotations

import argparse
import logging
import time

from .publisher import EventGridPublisher, Subscription


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--storage", required=True, help="connection string of the storage account to watch")
    p.add_argument("--container", default="uploads")
    p.add_argument("--endpoint", required=True, help="the webhook, e.g. the blob extension's with its key")
    p.add_argument("--duplicate-rate", type=float, default=0.0, help="share of events delivered twice (0-1)")
    p.add_argument("--shuffle", action="store_true", help="deliver a batch's events out of order")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sub = Subscription(args.endpoint, duplicate_rate=args.duplicate_rate, shuffle=args.shuffle)
    publisher = EventGridPublisher(args.storage, args.container, sub).start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        publisher.stop()


if __name__ == "__main__":
    main()
