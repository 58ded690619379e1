"""Local stand-ins for the Azure services this app uses: IoT Hub, IoT Central, Azurite, the Functions host."""
