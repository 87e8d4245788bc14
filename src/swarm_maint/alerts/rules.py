"""Prometheus alerting rule files: loading, validation and annotation templates.

A rule file is Prometheus' YAML format::

    groups:
      - name: gpu
        interval: 30s            # optional
        rules:
          - alert: GpuLost
            expr: swarm_gpu_lost == 1
            for: 1m              # optional
            keep_firing_for: 5m  # optional
            labels: {severity: critical}
            annotations:
              summary: "GPU {{ $labels.gpu }} is lost (value {{ $value }})"

Recording rules (``record:``) are not supported yet. Every problem raises a
:class:`~swarm_maint.errors.ConfigError` with one line naming the file, group, rule and
problem. Label and annotation values are templates supporting only ``{{ $labels.NAME }}``,
``{{ $value }}``, ``{{ $value | humanize }}``, ``{{ $value | humanizeDuration }}`` and
``{{ printf "FMT" $value }}`` (one ``%f``/``%e``/``%g``/``%d``/``%s``/``%v`` verb);
anything else is a load error. A missing label renders as ``<no value>``, like Go
templates.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..durations import check_duration
from ..errors import ConfigError
from .promql import Expr, compile_expr

__all__ = [
    "DEFAULT_RULES_NAME",
    "AlertRule",
    "Template",
    "humanize",
    "load_default_rules",
    "load_rule_file",
    "load_rules",
    "parse_prom_duration",
]

DEFAULT_RULES_NAME = "default_rules.yml"
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_GROUP_KEYS = ("name", "interval", "rules")
_RULE_KEYS = ("alert", "expr", "for", "keep_firing_for", "labels", "annotations")


# -- durations ----------------------------------------------------------------------------

_DURATION = re.compile(
    r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?\Z"
)
_DURATION_UNITS = (31_536_000.0, 604_800.0, 86_400.0, 3600.0, 60.0, 1.0, 0.001)


def parse_prom_duration(text: str) -> float:
    """Seconds in a Prometheus duration (``30s``, ``5m``, ``1h30m``, ``0``); ValueError if bad."""
    if text == "0":
        return 0.0
    m = _DURATION.match(text)
    if not text or m is None:
        raise ValueError(
            f"invalid duration {text!r}; write e.g. '30s', '5m' or '1h30m' "
            "(units y w d h m s ms, largest first)"
        )
    return check_duration(
        sum(float(g) * u for g, u in zip(m.groups(), _DURATION_UNITS, strict=True) if g), text)


# -- templates ----------------------------------------------------------------------------

_Part = Callable[[Mapping[str, str], float], str]
_ACTION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_LABEL_REF = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)\Z")
_VALUE_REF = re.compile(r"\$value\Z")
_HUMANIZE = re.compile(r"\$value\s*\|\s*humanize(Duration)?\Z")
_PRINTF = re.compile(r'printf\s+"((?:[^"\\]|\\.)*)"\s+\$value\Z')
_VERB = re.compile(r"%([-+ 0#]*)(\d*)(?:\.(\d+))?([a-zA-Z%])")


def _go_float(v: float) -> str:
    """A float as Go's ``%v`` prints it (close enough): 1, 0.5, NaN, +Inf."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e21:
        return str(int(v))
    return repr(v)


def _prom_special(v: float) -> str:
    """NaN and infinities as Prometheus' Go templates print them."""
    return "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf")


def humanize(v: float) -> str:
    """Prometheus' ``humanize``: 4 significant digits with an SI prefix (1.235k, 12.5m)."""
    if math.isnan(v) or math.isinf(v):
        return _prom_special(v)
    if v == 0:
        return f"{v:.4g}"
    if abs(v) >= 1:
        prefix = ""
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000:
                break
            prefix = p
            v /= 1000
        return f"{v:.4g}{prefix}"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix = p
        v *= 1000
    return f"{v:.4g}{prefix}"


def humanize_duration(v: float) -> str:
    """Prometheus' ``humanizeDuration``: seconds as ``1d 2h 3m 4s`` (``42.5s`` below 1m)."""
    if math.isnan(v) or math.isinf(v):
        return _prom_special(v)
    if abs(v) < 60:
        return f"{v:.4g}s"
    sign, secs = ("-" if v < 0 else ""), int(abs(v))
    days, rest = divmod(secs, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
    if hours:
        return f"{sign}{hours}h {minutes}m {seconds}s"
    return f"{sign}{minutes}m {seconds}s"


_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


def _printf_part(fmt_src: str) -> _Part:
    fmt = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), fmt_src)
    literals: list[str] = []
    verbs: list[tuple[str, str, str | None, str]] = []
    cur: list[str] = []
    pos = 0
    for m in _VERB.finditer(fmt):
        cur.append(fmt[pos : m.start()])
        pos = m.end()
        flags, width, prec, conv = m.groups()
        if conv == "%":
            cur.append("%")
            continue
        if conv not in "fFeEgGdsv":
            raise ValueError(f"printf verb %{conv} is not supported")
        verbs.append((flags, width, prec, conv))
        literals.append("".join(cur))
        cur = []
    if "%" in fmt[pos:]:
        raise ValueError(f"bad printf format {fmt_src!r}")
    cur.append(fmt[pos:])
    if len(verbs) != 1:
        raise ValueError("printf needs exactly one verb for $value")
    before, after = literals[0], "".join(cur)
    flags, width, prec, conv = verbs[0]
    align = "<" if "-" in flags else ""
    sign = "+" if "+" in flags else (" " if " " in flags else "")
    zero = "0" if "0" in flags and not align else ""
    alt = "#" if "#" in flags else ""
    num_spec = align + sign + alt + zero + width + (f".{prec}" if prec is not None else "")
    str_spec = (align or ">") + width

    def render(_labels: Mapping[str, str], value: float) -> str:
        if conv in "sv" or not math.isfinite(value):
            body = format(_go_float(value), str_spec)
        elif conv == "d":
            body = format(int(value), num_spec.split(".")[0] + "d")
        else:
            body = format(value, num_spec + conv)
        return before + body + after

    return render


def _action_part(inner: str) -> _Part:
    text = inner.strip()
    m = _LABEL_REF.match(text)
    if m:
        name = m.group(1)
        return lambda labels, _v: labels.get(name, "<no value>")
    if _VALUE_REF.match(text):
        return lambda _l, v: _go_float(v)
    m = _HUMANIZE.match(text)
    if m:
        return (lambda _l, v: humanize_duration(v)) if m.group(1) else (
            lambda _l, v: humanize(v))
    m = _PRINTF.match(text)
    if m:
        return _printf_part(m.group(1))
    raise ValueError(f"unsupported template construct '{{{{{inner}}}}}'")


@dataclass(frozen=True)
class Template:
    """A label or annotation value compiled once; ``render`` never evaluates code."""

    source: str
    _parts: tuple[str | _Part, ...] = field(repr=False, compare=False)

    @classmethod
    def compile(cls, source: str) -> Template:
        """Raises ValueError naming the first unsupported construct."""
        parts: list[str | _Part] = []
        pos = 0
        for m in _ACTION.finditer(source):
            if m.start() > pos:
                parts.append(source[pos : m.start()])
            try:
                parts.append(_action_part(m.group(1)))
            except ValueError as e:
                if str(e).startswith("unsupported template construct"):
                    raise
                raise ValueError(f"template construct '{m.group(0)}': {e}") from None
            pos = m.end()
        rest = source[pos:]
        if "{{" in rest:
            raise ValueError(f"unclosed '{{{{' in template {source!r}")
        if rest:
            parts.append(rest)
        return cls(source, tuple(parts))

    def render(self, labels: Mapping[str, str], value: float) -> str:
        return "".join(p if isinstance(p, str) else p(labels, value) for p in self._parts)


# -- rules --------------------------------------------------------------------------------


@dataclass(eq=False)
class AlertRule:
    """One alerting rule; ``last_error`` is set by the engine when evaluation fails."""

    group: str
    name: str
    expr: Expr
    for_seconds: float = 0.0
    keep_firing_for_seconds: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    source: str = ""
    interval_seconds: float | None = None
    last_error: str | None = None
    _label_templates: dict[str, Template] = field(default_factory=dict, repr=False)
    _annotation_templates: dict[str, Template] = field(default_factory=dict, repr=False)

    def render_labels(self, labels: Mapping[str, str], value: float) -> dict[str, str]:
        return {k: t.render(labels, value) for k, t in self._label_templates.items()}

    def render_annotations(self, labels: Mapping[str, str], value: float) -> dict[str, str]:
        return {k: t.render(labels, value) for k, t in self._annotation_templates.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "name": self.name,
            "source": self.source,
            "expr": self.expr.text,
            "for_seconds": self.for_seconds,
            "keep_firing_for_seconds": self.keep_firing_for_seconds,
            "interval_seconds": self.interval_seconds,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
        }


class _RuleError(Exception):
    pass


def _duration_field(raw: Mapping[str, Any], key: str) -> float:
    v = raw.get(key)
    if v is None:
        return 0.0
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise _RuleError(f"{key}: expected a duration string such as '5m'")
    try:
        return parse_prom_duration(str(v))
    except ValueError as e:
        raise _RuleError(f"{key}: {e}") from None


def _templates(raw: Mapping[str, Any], key: str) -> tuple[dict[str, str], dict[str, Template]]:
    v = raw.get(key)
    if v is None:
        return {}, {}
    if not isinstance(v, dict):
        raise _RuleError(f"{key}: expected a mapping of names to strings")
    texts: dict[str, str] = {}
    compiled: dict[str, Template] = {}
    for name, text in v.items():
        if not isinstance(name, str) or not _LABEL_NAME.match(name):
            raise _RuleError(f"{key}: invalid name {name!r}")
        if key == "labels" and name in ("alertname", "__name__"):
            raise _RuleError(f"{key}.{name}: this label is set by the engine")
        if not isinstance(text, str):
            raise _RuleError(f"{key}.{name}: expected a string, got {text!r}")
        try:
            compiled[name] = Template.compile(text)
        except ValueError as e:
            raise _RuleError(f"{key}.{name}: {e}") from None
        texts[name] = text
    return texts, compiled


def _unknown_keys(raw: Mapping[Any, Any], allowed: Iterable[str]) -> str | None:
    allowed = tuple(allowed)
    for k in raw:
        if k not in allowed:
            return f"unknown key {k!r} (allowed: {', '.join(allowed)})"
    return None


def _build_rule(
    raw: Mapping[str, Any], group: str, interval: float | None, source: str
) -> AlertRule:
    name = raw["alert"]
    try:
        expr = compile_expr(raw["expr"])
    except ValueError as e:
        raise _RuleError(f"expr: {e}") from None
    if expr.kind != "vector":
        raise _RuleError("expr: must return an instant vector, not a scalar "
                         "(wrap it in vector())")
    labels, label_t = _templates(raw, "labels")
    annotations, annotation_t = _templates(raw, "annotations")
    return AlertRule(
        group=group,
        name=name,
        expr=expr,
        for_seconds=_duration_field(raw, "for"),
        keep_firing_for_seconds=_duration_field(raw, "keep_firing_for"),
        labels=labels,
        annotations=annotations,
        source=source,
        interval_seconds=interval,
        _label_templates=label_t,
        _annotation_templates=annotation_t,
    )


def _rule_id(raw: Any, index: int) -> str:
    if isinstance(raw, dict):
        for k in ("alert", "record"):
            if isinstance(raw.get(k), str) and raw[k]:
                return str(raw[k])
    return f"#{index + 1}"


def _load_group(graw: Any, gi: int, source: str, seen_groups: set[str]) -> list[AlertRule]:
    if not isinstance(graw, dict):
        raise ConfigError(f"{source}: group #{gi + 1}: expected a mapping")
    gname = graw.get("name")
    if not isinstance(gname, str) or not gname:
        raise ConfigError(f"{source}: group #{gi + 1}: name: required, a non-empty string")
    where = f"{source}: group {gname}"
    if (problem := _unknown_keys(graw, _GROUP_KEYS)) is not None:
        raise ConfigError(f"{where}: {problem}")
    if gname in seen_groups:
        raise ConfigError(f"{where}: duplicate group name")
    seen_groups.add(gname)
    interval: float | None = None
    if graw.get("interval") is not None:
        try:
            interval = _duration_field(graw, "interval")
        except _RuleError as e:
            raise ConfigError(f"{where}: {e}") from None
    rules_raw = graw.get("rules")
    if rules_raw is None:
        rules_raw = []
    if not isinstance(rules_raw, list):
        raise ConfigError(f"{where}: rules: expected a list")
    out: list[AlertRule] = []
    names: set[str] = set()
    for ri, raw in enumerate(rules_raw):
        rid = _rule_id(raw, ri)
        rwhere = f"{where}, rule {rid}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{rwhere}: expected a mapping")
        if "record" in raw:
            raise ConfigError(f"{rwhere}: recording rules (record:) are not supported yet; "
                              "only alerting rules (alert:)")
        if (problem := _unknown_keys(raw, _RULE_KEYS)) is not None:
            raise ConfigError(f"{rwhere}: {problem}")
        if not isinstance(raw.get("alert"), str) or not _LABEL_NAME.match(raw["alert"]):
            raise ConfigError(f"{rwhere}: alert: required, a name like GpuLost "
                              "(letters, digits, underscores)")
        if not isinstance(raw.get("expr"), str) or not raw["expr"].strip():
            raise ConfigError(f"{rwhere}: expr: required, a PromQL expression string")
        if rid in names:
            raise ConfigError(f"{rwhere}: duplicate alert name in the group")
        names.add(rid)
        try:
            out.append(_build_rule(raw, gname, interval, source))
        except _RuleError as e:
            raise ConfigError(f"{rwhere}: {e}") from None
    return out


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans, as Prometheus reads them: only true/false, not yes/no/on/off."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _load_text(text: str, source: str) -> list[AlertRule]:
    try:
        doc = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        pos = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = e.problem or e.context or "invalid YAML"
        raise ConfigError(f"{source}: {pos}YAML syntax error: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: YAML syntax error: {' '.join(str(e).split())}") from None
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'groups' list at the top")
    if (problem := _unknown_keys(doc, ("groups",))) is not None:
        raise ConfigError(f"{source}: {problem}")
    groups = doc.get("groups") or []
    if not isinstance(groups, list):
        raise ConfigError(f"{source}: groups: expected a list")
    rules: list[AlertRule] = []
    seen: set[str] = set()
    for gi, graw in enumerate(groups):
        rules.extend(_load_group(graw, gi, source, seen))
    return rules


def load_rule_file(path: str | Path) -> list[AlertRule]:
    """The alerting rules of one Prometheus rule file; ConfigError (one line) if invalid."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"{source}: cannot read the rule file: {reason}") from None
    return _load_text(text, source)


def load_default_rules() -> list[AlertRule]:
    """The rules shipped with swarm-maint (``alerts/default_rules.yml``)."""
    text = resources.files(__package__).joinpath(DEFAULT_RULES_NAME).read_text("utf-8")
    return _load_text(text, f"<built-in {DEFAULT_RULES_NAME}>")


def load_rules(paths: Iterable[str | Path], include_defaults: bool = True) -> list[AlertRule]:
    """The default rules (unless disabled) followed by the rules of every file in order."""
    rules = load_default_rules() if include_defaults else []
    for p in paths:
        rules.extend(load_rule_file(p))
    return rules
