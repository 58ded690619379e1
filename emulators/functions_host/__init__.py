"""Local Functions runner for development and tests; production never imports it."""

from .host import FUNCTION_KEY, MASTER_KEY, POISON_QUEUE, FunctionsHost, load_settings

__all__ = ["FUNCTION_KEY", "MASTER_KEY", "POISON_QUEUE", "FunctionsHost", "load_settings"]
