"""The node agent behind ``serve``: actor system, control sessions, WireGuard interface, HTTP API."""
