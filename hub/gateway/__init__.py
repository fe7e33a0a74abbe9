"""The SSH gateway process: one port for every instance's SSH endpoint."""
