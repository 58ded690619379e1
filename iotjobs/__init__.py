"""``iotjobs``: the command-line client of IoT Registry Jobs. It drops devices files into ``uploads/`` and talks to
the app's HTTP API; see ``iotjobs --help``."""
