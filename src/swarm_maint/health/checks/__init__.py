"""Built-in check families, one module each; each exposes ``create(ctx) -> list[HealthCheck]``."""
