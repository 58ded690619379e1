"""Logging the app sets for itself, because the Functions host's ``host.json`` log levels do not filter Python
loggers: the Python worker forwards every record the app's loggers emit to Application Insights."""

from __future__ import annotations

import logging


def quiet_sdk_logs() -> None:
    """The Azure SDK logs every HTTP request and response at INFO (its ``http_logging_policy``): thousands of lines
    per import in Application Insights. Its warnings and errors still get through."""
    logging.getLogger("azure").setLevel(logging.WARNING)
