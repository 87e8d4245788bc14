"""Fixtures shared by the health tests."""

from tests.monitoring.conftest import fake_nvml  # noqa: F401
