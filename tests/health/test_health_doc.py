from pathlib import Path

from swarm_maint.health.xid_catalog import CATALOG

DOC = (Path(__file__).resolve().parents[2] / "docs" / "health.md").read_text()


def test_every_catalog_code_is_documented() -> None:
    for code, info in CATALOG.items():
        assert f"| {code} | {info.title} | {info.severity} | `{info.action}` |" in DOC
