"""Health checks: hardware and software diagnostics with hysteresis, history and metrics."""
