"""The app's domain code: validator, IoT Hub client, storage, ledger, reports. Never imports azure.functions."""
