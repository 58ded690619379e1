"""A local IoT Central application: the data-export API (destinations and exports) over HTTPS."""

from .auth import api_token
from .server import IoTCentralEmulator

__all__ = ["IoTCentralEmulator", "api_token"]
