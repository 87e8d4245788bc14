"""Alertmanager-style label matchers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm_maint.alerts.matchers import matches_all, parse_matcher, parse_matchers


@pytest.mark.parametrize(("text", "labels", "hit"), [
    ("severity=critical", {"severity": "critical"}, True),
    ('severity="critical"', {"severity": "warning"}, False),
    ("severity!=critical", {"severity": "warning"}, True),
    ("severity!=critical", {}, True),
    ('gpu=~"1|2"', {"gpu": "1"}, True),
    ('gpu=~"1|2"', {"gpu": "10"}, False),  # anchored
    ('gpu!~"1.*"', {"gpu": "2"}, True),
    ('gpu!~"1.*"', {"gpu": "12"}, False),
    ('team=""', {}, True),  # absent is the empty string
    (' node = "a b" ', {"node": "a b"}, True),
    (r'msg="say \"hi\" \\ ok"', {"msg": 'say "hi" \\ ok'}, True),
])
def test_matches(text: str, labels: dict[str, str], hit: bool) -> None:
    assert parse_matcher(text).matches(labels) is hit


@pytest.mark.parametrize(("text", "problem"), [
    ("=x", "label name first"),
    ("9a=x", "label name first"),
    ("sev~x", "expected =, !=, =~ or !~"),
    ('sev="x', "unbalanced quotes"),
    ('sev="a"b"', "unescaped"),
    ("sev=~(", "bad regular expression"),
])
def test_malformed_matchers_say_why(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_matcher(text)


def test_matches_all() -> None:
    ms = parse_matchers(["alertname=GpuLost", "severity=~crit.*"])
    assert matches_all(ms, {"alertname": "GpuLost", "severity": "critical"})
    assert not matches_all(ms, {"alertname": "GpuLost", "severity": "warning"})
    assert matches_all([], {})


@given(st.sampled_from(["=", "!=", "=~", "!~"]),
       st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20))
def test_str_parses_back_to_the_same_matcher(op: str, value: str) -> None:
    import re

    if op in ("=~", "!~"):
        value = re.escape(value)
    m = parse_matcher(f"name{op}" + '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
    assert m.value == value
    again = parse_matcher(str(m))
    assert (again.name, again.op, again.value) == ("name", op, value)
    assert again.matches({"name": value}) == m.matches({"name": value})
