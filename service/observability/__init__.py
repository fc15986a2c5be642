"""Logs (JSON lines) and metrics (Prometheus), plus the middleware that records every request."""
