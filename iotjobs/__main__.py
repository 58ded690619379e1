"""``python -m iotjobs``: the same as the ``iotjobs`` command."""

from .cli import main

raise SystemExit(main())
