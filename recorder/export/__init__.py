"""Executions out of a store in portable forms: a bundle another store imports, HAR for
HTTP tools, OTLP/JSON for OpenTelemetry backends. Pure conversion: no sockets, no files
opened here; the command line (``flux export``, ``flux import``) does the I/O."""
