"""Helpers to read collector output in tests."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import Metric


def sample_map(families: Iterable[Metric]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, frozenset(labels.items())): value} over every sample."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for fam in families:
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(families: Iterable[Metric], name: str, **labels: str) -> float:
    """The value of the one sample called ``name`` whose labels include ``labels``."""
    hits = [
        s.value
        for fam in families
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    if len(hits) != 1:
        raise AssertionError(f"{len(hits)} samples match {name}{labels}")
    return hits[0]


def names(families: Iterable[Metric]) -> set[str]:
    return {s.name for fam in families for s in fam.samples}
