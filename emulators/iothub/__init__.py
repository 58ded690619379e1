"""A local IoT Hub: device registry and import/export jobs over HTTPS (api-version 2021-04-12)."""

from .auth import POLICIES, connection_string
from .faults import FaultConfig
from .server import API_VERSION, IoTHubEmulator

__all__ = ["API_VERSION", "POLICIES", "FaultConfig", "IoTHubEmulator", "connection_string"]
