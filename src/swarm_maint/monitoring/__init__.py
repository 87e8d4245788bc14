"""Metric collection: collectors, the hub that caches and exports them, and history."""
