"""Label matchers in Alertmanager's syntax, for routes, silences and maintenance windows.

A matcher is ``name OP value`` with OP one of ``=``, ``!=``, ``=~``, ``!~``; the value may
be double-quoted (with ``\\"`` and ``\\\\`` escapes) or bare. Regular expressions are
anchored at both ends, as in Prometheus: ``severity=~"crit.*"`` matches ``critical``.
A label that is absent has the value ``""``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["Matcher", "matches_all", "parse_matcher", "parse_matchers"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPS = ("=~", "!~", "!=", "=")


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        v = labels.get(self.name, "")
        if self.op == "=":
            return v == self.value
        if self.op == "!=":
            return v != self.value
        assert self._regex is not None
        hit = self._regex.fullmatch(v) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.name}{self.op}"{escaped}"'

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "op": self.op, "value": self.value}


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        out, i, body = [], 0, text[1:-1]
        while i < len(body):
            c = body[i]
            if c == "\\" and i + 1 < len(body):
                out.append(body[i + 1])
                i += 2
                continue
            if c == '"':
                raise ValueError("unescaped '\"' inside a quoted value")
            out.append(c)
            i += 1
        return "".join(out)
    if '"' in text:
        raise ValueError("unbalanced quotes in the value")
    return text


def parse_matcher(text: str) -> Matcher:
    """Parse one matcher; ``ValueError`` with a one-line reason when it is malformed."""
    s = text.strip()
    m = _NAME.match(s)
    if m is None:
        raise ValueError(f"matcher {text!r}: expected a label name first, like severity=critical")
    name, rest = m.group(0), s[m.end():].lstrip()
    op = next((o for o in _OPS if rest.startswith(o)), None)
    if op is None:
        raise ValueError(f"matcher {text!r}: expected =, !=, =~ or !~ after {name!r}")
    try:
        value = _unquote(rest[len(op):].strip())
    except ValueError as exc:
        raise ValueError(f"matcher {text!r}: {exc}") from None
    regex = None
    if op in ("=~", "!~"):
        try:
            regex = re.compile(value)
        except re.error as exc:
            raise ValueError(f"matcher {text!r}: bad regular expression: {exc}") from None
    return Matcher(name, op, value, regex)


def parse_matchers(texts: Iterable[str]) -> list[Matcher]:
    return [parse_matcher(t) for t in texts]


def matches_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)
