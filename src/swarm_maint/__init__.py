"""swarm-maint: the maintenance agent of Swarm GPU nodes."""

__version__ = "0.1.0"

__all__ = ["__version__"]
