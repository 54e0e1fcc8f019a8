"""Firecracker's HTTP API for this machine, kept apart from the VMM as Firecracker keeps its
API server apart from `vmm`:

- `server`: the HTTP server on a Unix socket (http.server), routes, config files, `serve()`;
- `config`: typed request bodies and their parser (Firecracker's vmm_config);
- `controller`: the state machine Not started / Running / Paused (Firecracker's rpc_interface);
- `resources`: what is configured before boot and how it maps to VmConfig (resources.rs);
- `runner`: the guest's thread, running rounds of virtual time until paused;
- `telemetry`: the logger and metrics, JSON lines;
- `client`: a minimal Python client for the socket (what an SDK does);
- `firecracker-api.json`: the part of Firecracker's API definition served here (checked by
  tests/test_api_schema.py).
"""
