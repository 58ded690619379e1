"""Local Functions runner for development and tests; production never imports it."""

from .blobs import POISON_QUEUE
from .host import BLOBS_EXTENSION_KEY, FUNCTION_KEY, MASTER_KEY, FunctionsHost, load_settings

__all__ = ["BLOBS_EXTENSION_KEY", "FUNCTION_KEY", "MASTER_KEY", "POISON_QUEUE", "FunctionsHost", "load_settings"]
