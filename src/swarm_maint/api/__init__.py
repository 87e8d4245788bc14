"""The agent's HTTP API (FastAPI): /metrics, /api/v1/…"""
