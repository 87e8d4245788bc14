"""Built-in collectors, one module each; each module exposes ``create(ctx) -> Collector``."""
