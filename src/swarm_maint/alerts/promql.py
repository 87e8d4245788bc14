"""A small PromQL evaluator for alert rules over the agent's in-memory metric history.

``compile_expr`` parses an expression once (with ``promql_parser``), rejects everything
outside the supported subset with :class:`UnsupportedExpression`, and returns an
:class:`Expr` whose ``evaluate(source, at)`` computes an instant vector or a scalar at
time ``at`` from a :class:`SeriesSource` (``MetricHistory`` implements it).

Supported subset:

* vector selectors with a metric name and ``=``, ``!=``, ``=~``, ``!~`` matchers (regexes
  fully anchored), 5-minute lookback: the newest sample at or before ``at`` and no older
  than 300 s; range selectors ``[d]``: the samples in ``(at - d, at]``;
* number literals, parentheses, unary minus;
* arithmetic ``+ - * / % ^`` and comparisons ``== != > < >= <=`` (filtering, or 0/1 with
  ``bool``) between scalars, vectors and scalars, and vectors (one-to-one matching on all
  labels but ``__name__``, or ``on(...)`` / ``ignoring(...)``); ``and``, ``or``,
  ``unless`` with ``on`` / ``ignoring``;
* functions ``rate``, ``increase``, ``delta``, ``avg_over_time``, ``min_over_time``,
  ``max_over_time``, ``sum_over_time``, ``count_over_time``, ``last_over_time``,
  ``absent``, ``abs``, ``clamp_min``, ``clamp_max``, ``time``, ``vector``;
* aggregations ``sum``, ``avg``, ``min``, ``max``, ``count`` with ``by`` / ``without``.

Simplifications against Prometheus:

* ``rate`` is ``(last - first + counter resets) / (t_last - t_first)`` over the samples in
  the window and ``increase`` is that rate times the range, i.e. always extrapolated to
  the full range (Prometheus extrapolates only up to half a sample interval past the
  first and last samples, and not below zero); ``delta`` is the same without reset
  handling. Fewer than two samples give no result, as in Prometheus.
* A counter that appeared inside the window of ``rate``/``increase`` while the source was
  watching (``SeriesBirths``; e.g. the first XID of a code) is taken to have started at 0,
  like Prometheus with created timestamps: ``increase`` is then its last value plus resets,
  not extrapolated, so a first event can fire a rule.
* Staleness: over ``MetricHistory`` (which knows the frames), a series missing from the
  newest frame is stale, as Prometheus marks series that vanish from a scrape; a source
  without frames keeps a series visible until its last sample is older than 300 s.
* Matching cardinality errors (duplicate series on one side of a one-to-one operation)
  raise ``ValueError`` at evaluation time.

``__name__`` is dropped by functions (except ``last_over_time``, like Prometheus),
aggregations, arithmetic, unary minus and ``bool`` comparisons; a plain selector and a
filtering comparison keep it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias

import promql_parser as pp

__all__ = [
    "LOOKBACK_SECONDS",
    "Expr",
    "Sample",
    "SeriesBirths",
    "SeriesSource",
    "UnsupportedExpression",
    "compile_expr",
]

LOOKBACK_SECONDS = 300.0

Labels: TypeAlias = dict[str, str]
Sample: TypeAlias = tuple[dict[str, str], float]
Points: TypeAlias = list[tuple[float, float]]
Series: TypeAlias = tuple[dict[str, str], list[tuple[float, float]]]


class SeriesSource(Protocol):
    def series(
        self, name: str, start: float, end: float
    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """Every series of metric ``name`` with its points in [start, end], oldest first."""
        ...


class SeriesBirths(Protocol):
    def births(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """When each series of ``name`` first appeared, for those that appeared after the
        source began watching (keyed by the label pairs in the order ``series`` gives)."""
        ...


class UnsupportedExpression(ValueError):
    """The expression is valid PromQL but uses a construct outside the supported subset."""


VecFn: TypeAlias = Callable[[SeriesSource, float], list[Sample]]
ScalarFn: TypeAlias = Callable[[SeriesSource, float], float]
MatFn: TypeAlias = Callable[[SeriesSource, float], list[Series]]


@dataclass(frozen=True)
class _Vec:
    fn: VecFn
    selector: pp.VectorSelector | None = None  # set for a plain selector (for absent())


@dataclass(frozen=True)
class _Scalar:
    fn: ScalarFn


@dataclass(frozen=True)
class _Mat:
    fn: MatFn
    range_s: float
    name: str = ""


_Node: TypeAlias = _Vec | _Scalar | _Mat


@dataclass(frozen=True)
class Expr:
    """A compiled expression; ``kind`` tells what ``evaluate`` returns."""

    text: str
    kind: Literal["vector", "scalar"]
    _node: _Vec | _Scalar
    max_range: float = 0.0  # the longest range selector, in seconds (0 when none)

    def evaluate(self, source: SeriesSource, at: float) -> list[Sample] | float:
        """The instant vector (list of samples) or scalar value of the expression at ``at``."""
        return self._node.fn(source, at)


def compile_expr(text: str) -> Expr:
    """Parse and check ``text``; raises ValueError (UnsupportedExpression for valid PromQL
    outside the supported subset)."""
    try:
        try:
            ast = pp.parse(text)
        except ValueError as e:
            raise ValueError(f"invalid PromQL expression {text!r}: {e}") from None
        node = _compile(ast)
        max_range = _max_range(ast)
    except RecursionError:  # thousands of nested parentheses: one line, not a traceback
        raise ValueError(f"PromQL expression {text[:80]!r}…: nested too deeply") from None
    if isinstance(node, _Mat):
        raise UnsupportedExpression("range vector results are not supported")
    return Expr(text, "vector" if isinstance(node, _Vec) else "scalar", node, max_range)


def _max_range(e: object) -> float:
    if isinstance(e, pp.MatrixSelector):
        return float(e.range.total_seconds())
    children: list[object] = []
    for attr in ("lhs", "rhs", "expr", "param"):
        child = getattr(e, attr, None)
        if child is not None:
            children.append(child)
    children.extend(getattr(e, "args", None) or [])
    return max((_max_range(c) for c in children), default=0.0)


# -- compilation ----------------------------------------------------------------------------


def _compile(e: pp.Expr) -> _Node:
    if isinstance(e, pp.NumberLiteral):
        v = float(e.val)
        return _Scalar(lambda _s, _t: v)
    if isinstance(e, pp.ParenExpr):
        return _compile(e.expr)
    if isinstance(e, pp.UnaryExpr):
        return _compile_neg(_compile(e.expr))
    if isinstance(e, pp.VectorSelector):
        return _compile_selector(e)
    if isinstance(e, pp.MatrixSelector):
        return _compile_matrix(e)
    if isinstance(e, pp.BinaryExpr):
        return _compile_binary(e)
    if isinstance(e, pp.Call):
        return _compile_call(e)
    if isinstance(e, pp.AggregateExpr):
        return _compile_aggregate(e)
    if isinstance(e, pp.SubqueryExpr):
        raise UnsupportedExpression("subqueries are not supported")
    if isinstance(e, pp.StringLiteral):
        raise UnsupportedExpression("string literals are not supported")
    raise UnsupportedExpression(f"{type(e).__name__} expressions are not supported")


def _compile_neg(inner: _Node) -> _Node:
    if isinstance(inner, _Scalar):
        f = inner.fn
        return _Scalar(lambda s, t: -f(s, t))
    if isinstance(inner, _Vec):
        g = inner.fn
        return _Vec(lambda s, t: [(_drop_name(lb), -v) for lb, v in g(s, t)])
    raise UnsupportedExpression("unary minus on a range vector is not supported")


def _matcher_fn(m: pp.Matcher) -> Callable[[Labels], bool]:
    name, value, op = m.name, m.value, m.op
    if op == pp.MatchOp.Equal:
        return lambda lb: lb.get(name, "") == value
    if op == pp.MatchOp.NotEqual:
        return lambda lb: lb.get(name, "") != value
    try:
        rx = re.compile(value)
    except re.error as err:
        raise ValueError(f"invalid regex {value!r} in matcher for {name}: {err}") from None
    if op == pp.MatchOp.Re:
        return lambda lb: rx.fullmatch(lb.get(name, "")) is not None
    return lambda lb: rx.fullmatch(lb.get(name, "")) is None


def _selector_parts(vs: pp.VectorSelector) -> tuple[str, list[Callable[[Labels], bool]]]:
    if vs.offset is not None:
        raise UnsupportedExpression("offset modifiers are not supported")
    if vs.at is not None:
        raise UnsupportedExpression("@ modifiers are not supported")
    if vs.matchers.or_matchers:
        raise UnsupportedExpression("'or' inside label matchers is not supported")
    name = vs.name
    matchers = list(vs.matchers.matchers)
    if name is None:
        for m in matchers:
            if m.name == "__name__" and m.op == pp.MatchOp.Equal:
                name = m.value
                break
    if name is None:
        raise UnsupportedExpression("selectors without a metric name are not supported")
    return name, [_matcher_fn(m) for m in matchers]


def _fetch(
    src: SeriesSource, name: str, preds: Sequence[Callable[[Labels], bool]],
    start: float, end: float,
) -> list[Series]:
    out: list[Series] = []
    for labels, pts in src.series(name, start, end):
        lb = {**labels, "__name__": name}
        if all(p(lb) for p in preds):
            out.append((lb, pts))
    return out


def _compile_selector(vs: pp.VectorSelector) -> _Vec:
    name, preds = _selector_parts(vs)

    def run(src: SeriesSource, at: float) -> list[Sample]:
        out: list[Sample] = []
        latest = getattr(src, "latest", None)
        if latest is not None:  # fast path: the newest point only (MetricHistory has it)
            for labels, (_ts, v) in latest(name, at - LOOKBACK_SECONDS, at):
                lb = {**labels, "__name__": name}
                if all(p(lb) for p in preds):
                    out.append((lb, v))
            return out
        for lb, pts in _fetch(src, name, preds, at - LOOKBACK_SECONDS, at):
            for ts, v in reversed(pts):
                if at - LOOKBACK_SECONDS <= ts <= at:
                    out.append((lb, v))
                    break
        return out

    return _Vec(run, vs)


def _compile_matrix(ms: pp.MatrixSelector) -> _Mat:
    name, preds = _selector_parts(ms.vector_selector)
    rng = ms.range.total_seconds()

    def run(src: SeriesSource, at: float) -> list[Series]:
        out: list[Series] = []
        for lb, pts in _fetch(src, name, preds, at - rng, at):
            inside = [(ts, v) for ts, v in pts if at - rng < ts <= at]
            if inside:
                out.append((lb, inside))
        return out

    return _Mat(run, rng, name)


# -- binary operators -------------------------------------------------------------------------

_ARITH = {"+", "-", "*", "/", "%", "^"}
_COMPARE = {"==", "!=", ">", "<", ">=", "<="}
_SET = {"and", "or", "unless"}


def _arith(op: str, a: float, b: float) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0:
            if a == 0 or a != a:
                return math.nan
            return math.copysign(math.inf, a) * math.copysign(1.0, b)
        return a / b
    if op == "%":
        try:
            return math.fmod(a, b)
        except ValueError:
            return math.nan
    try:  # "^"
        return math.pow(a, b)
    except OverflowError:
        return math.inf
    except ValueError:
        return math.nan


def _compare(op: str, a: float, b: float) -> bool:
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if op == ">":
        return a > b
    if op == "<":
        return a < b
    if op == ">=":
        return a >= b
    return a <= b


def _drop_name(lb: Labels) -> Labels:
    if "__name__" not in lb:
        return lb
    return {k: v for k, v in lb.items() if k != "__name__"}


def _compile_binary(e: pp.BinaryExpr) -> _Node:
    op = str(e.op)
    if op not in _ARITH | _COMPARE | _SET:
        raise UnsupportedExpression(f"operator {op} is not supported")
    mod = e.modifier
    return_bool = bool(mod is not None and mod.return_bool)
    on: list[str] | None = None
    ignoring: list[str] = []
    if mod is not None:
        if mod.card in (pp.VectorMatchCardinality.ManyToOne, pp.VectorMatchCardinality.OneToMany):
            raise UnsupportedExpression("group_left/group_right are not supported")
        fill = mod.fill_values
        if fill is not None and (fill.lhs is not None or fill.rhs is not None):
            raise UnsupportedExpression("fill modifiers are not supported")
        if mod.matching is not None:
            if mod.matching.type == pp.LabelModifierType.Include:
                on = list(mod.matching.labels)
            else:
                ignoring = list(mod.matching.labels)
    lhs, rhs = _compile(e.lhs), _compile(e.rhs)
    if isinstance(lhs, _Mat) or isinstance(rhs, _Mat):
        raise UnsupportedExpression("binary operators on range vectors are not supported")

    if isinstance(lhs, _Scalar) and isinstance(rhs, _Scalar):
        lf, rf = lhs.fn, rhs.fn
        if op in _COMPARE:
            return _Scalar(lambda s, t: float(_compare(op, lf(s, t), rf(s, t))))
        return _Scalar(lambda s, t: _arith(op, lf(s, t), rf(s, t)))

    if isinstance(lhs, _Vec) and isinstance(rhs, _Vec):
        if op in _SET:
            return _Vec(_set_op(op, lhs.fn, rhs.fn, on, ignoring))
        return _Vec(_vector_binop(op, lhs.fn, rhs.fn, on, ignoring, return_bool))

    # vector <op> scalar or scalar <op> vector
    if op in _SET:
        raise UnsupportedExpression(f"set operator {op} needs vectors on both sides")
    if isinstance(lhs, _Scalar) and isinstance(rhs, _Vec):
        return _Vec(_scalar_binop(op, rhs.fn, lhs.fn, True, return_bool))
    if isinstance(lhs, _Vec) and isinstance(rhs, _Scalar):
        return _Vec(_scalar_binop(op, lhs.fn, rhs.fn, False, return_bool))
    raise UnsupportedExpression(f"operator {op} on these operand types is not supported")


def _scalar_binop(
    op: str, vec: VecFn, scal: ScalarFn, swap: bool, return_bool: bool
) -> VecFn:
    compare = op in _COMPARE

    def run(src: SeriesSource, at: float) -> list[Sample]:
        c = scal(src, at)
        out: list[Sample] = []
        for lb, v in vec(src, at):
            a, b = (c, v) if swap else (v, c)
            if not compare:
                out.append((_drop_name(lb), _arith(op, a, b)))
            elif return_bool:
                out.append((_drop_name(lb), float(_compare(op, a, b))))
            elif _compare(op, a, b):
                out.append((lb, v))  # the vector's value, whichever side it is on
        return out

    return run


def _signature_fn(
    on: list[str] | None, ignoring: list[str]
) -> Callable[[Labels], tuple[tuple[str, str], ...]]:
    if on is not None:
        keep = sorted(set(on))
        return lambda lb: tuple((k, lb[k]) for k in keep if k in lb)
    drop = {"__name__", *ignoring}
    return lambda lb: tuple(sorted((k, v) for k, v in lb.items() if k not in drop))


def _vector_binop(
    op: str, lf: VecFn, rf: VecFn, on: list[str] | None, ignoring: list[str],
    return_bool: bool,
) -> VecFn:
    sig = _signature_fn(on, ignoring)
    compare = op in _COMPARE
    drop_name = return_bool or not compare

    def result_labels(lb: Labels) -> Labels:
        if on is not None:
            return {k: lb[k] for k in on if k in lb}
        out = {k: v for k, v in lb.items() if k not in ignoring}
        return _drop_name(out) if drop_name else out

    def run(src: SeriesSource, at: float) -> list[Sample]:
        right: dict[tuple[tuple[str, str], ...], float] = {}
        for lb, v in rf(src, at):
            key = sig(lb)
            if key in right:
                raise ValueError(
                    f"many-to-many matching not allowed: duplicate series on the right side "
                    f"for {dict(key)}"
                )
            right[key] = v
        seen: set[tuple[tuple[str, str], ...]] = set()
        out: list[Sample] = []
        for lb, a in lf(src, at):
            key = sig(lb)
            if key not in right:
                continue
            if key in seen:
                raise ValueError(
                    f"multiple matches for labels {dict(key)}: duplicate series on the left side"
                )
            seen.add(key)
            b = right[key]
            if not compare:
                out.append((result_labels(lb), _arith(op, a, b)))
            elif return_bool:
                out.append((result_labels(lb), float(_compare(op, a, b))))
            elif _compare(op, a, b):
                out.append((result_labels(lb), a))
        return out

    return run


def _set_op(
    op: str, lf: VecFn, rf: VecFn, on: list[str] | None, ignoring: list[str]
) -> VecFn:
    sig = _signature_fn(on, ignoring)

    def run(src: SeriesSource, at: float) -> list[Sample]:
        left = lf(src, at)
        right = rf(src, at)
        if op == "or":
            have = {sig(lb) for lb, _ in left}
            return left + [(lb, v) for lb, v in right if sig(lb) not in have]
        keys = {sig(lb) for lb, _ in right}
        if op == "and":
            return [(lb, v) for lb, v in left if sig(lb) in keys]
        return [(lb, v) for lb, v in left if sig(lb) not in keys]  # unless

    return run


# -- functions --------------------------------------------------------------------------------


def _counter_delta(pts: Points, resets: bool) -> float:
    total = pts[-1][1] - pts[0][1]
    if resets:
        prev = pts[0][1]
        for _, v in pts[1:]:
            if v < prev:
                total += prev
            prev = v
    return total


def _rate_like(kind: str, range_s: float) -> Callable[[Points], float | None]:
    def f(pts: Points) -> float | None:
        if len(pts) < 2:
            return None
        span = pts[-1][0] - pts[0][0]
        if span <= 0:
            return None
        per_s = _counter_delta(pts, kind != "delta") / span
        return per_s if kind == "rate" else per_s * range_s

    return f


_OVER_TIME: dict[str, Callable[[Points], float]] = {
    "avg_over_time": lambda pts: math.fsum(v for _, v in pts) / len(pts),
    "min_over_time": lambda pts: min(v for _, v in pts),
    "max_over_time": lambda pts: max(v for _, v in pts),
    "sum_over_time": lambda pts: math.fsum(v for _, v in pts),
    "count_over_time": lambda pts: float(len(pts)),
    "last_over_time": lambda pts: pts[-1][1],
}


def _compile_call(e: pp.Call) -> _Node:
    fname = e.func.name
    args = [_compile(a) for a in e.args]
    if fname in ("rate", "increase", "delta") or fname in _OVER_TIME:
        m = args[0] if args else None
        if not isinstance(m, _Mat):
            raise UnsupportedExpression(f"function {fname} needs a range selector")
        reduce: Callable[[Points], float | None]
        reduce = _OVER_TIME[fname] if fname in _OVER_TIME else _rate_like(fname, m.range_s)
        keep_name = fname == "last_over_time"
        mf = m.fn
        counter = fname in ("rate", "increase")
        range_s, mname = m.range_s, m.name

        def over_range(src: SeriesSource, at: float) -> list[Sample]:
            out: list[Sample] = []
            births_fn = getattr(src, "births", None) if counter else None
            births = births_fn(mname) if births_fn is not None else {}
            for lb, pts in mf(src, at):
                born = births.get(tuple((k, v) for k, v in lb.items()
                                        if k != "__name__")) if births else None
                if born is not None and at - range_s < born <= pts[0][0]:
                    grown = _counter_delta(pts, True) + pts[0][1]  # from 0 at its birth
                    v: float | None = grown if fname == "increase" else grown / range_s
                else:
                    v = reduce(pts)
                if v is not None:
                    out.append((lb if keep_name else _drop_name(lb), v))
            return out

        return _Vec(over_range)
    if fname == "time":
        return _Scalar(lambda _s, t: t)
    if fname == "vector":
        sc = args[0]
        if not isinstance(sc, _Scalar):
            raise UnsupportedExpression("vector() needs a scalar argument")
        sf = sc.fn
        return _Vec(lambda s, t: [({}, sf(s, t))])
    if fname == "absent":
        return _compile_absent(args[0])
    if fname in ("abs", "clamp_min", "clamp_max"):
        v = args[0]
        if not isinstance(v, _Vec):
            raise UnsupportedExpression(f"function {fname} needs an instant vector")
        vf = v.fn
        if fname == "abs":
            return _Vec(lambda s, t: [(_drop_name(lb), abs(x)) for lb, x in vf(s, t)])
        bound = args[1]
        if not isinstance(bound, _Scalar):
            raise UnsupportedExpression(f"function {fname} needs a scalar bound")
        bf = bound.fn
        pick = max if fname == "clamp_min" else min

        def clamp(src: SeriesSource, at: float) -> list[Sample]:
            b = bf(src, at)
            return [(_drop_name(lb), math.nan if x != x else pick(x, b)) for lb, x in vf(src, at)]

        return _Vec(clamp)
    raise UnsupportedExpression(f"function {fname} is not supported")


def _compile_absent(arg: _Node) -> _Vec:
    if not isinstance(arg, _Vec):
        raise UnsupportedExpression("absent() needs an instant vector")
    labels: Labels = {}
    if arg.selector is not None:
        counts: dict[str, int] = {}
        for m in arg.selector.matchers.matchers:
            if m.op == pp.MatchOp.Equal and m.name != "__name__":
                labels[m.name] = m.value
                counts[m.name] = counts.get(m.name, 0) + 1
        labels = {k: v for k, v in labels.items() if counts[k] == 1}
    af = arg.fn

    def run(src: SeriesSource, at: float) -> list[Sample]:
        return [] if af(src, at) else [(dict(labels), 1.0)]

    return _Vec(run)


# -- aggregations -----------------------------------------------------------------------------

_AGGREGATORS: dict[str, Callable[[list[float]], float]] = {
    "sum": math.fsum,
    "avg": lambda vs: math.fsum(vs) / len(vs),
    "min": lambda vs: _nan_min(vs),
    "max": lambda vs: _nan_max(vs),
    "count": lambda vs: float(len(vs)),
}


def _nan_min(vs: list[float]) -> float:
    real = [v for v in vs if v == v]
    return min(real) if real else math.nan


def _nan_max(vs: list[float]) -> float:
    real = [v for v in vs if v == v]
    return max(real) if real else math.nan


def _compile_aggregate(e: pp.AggregateExpr) -> _Vec:
    op = str(e.op)
    agg = _AGGREGATORS.get(op)
    if agg is None:
        raise UnsupportedExpression(f"aggregation {op} is not supported")
    inner = _compile(e.expr)
    if not isinstance(inner, _Vec):
        raise UnsupportedExpression(f"aggregation {op} needs an instant vector")
    mod = e.modifier
    by: list[str] | None = []  # no modifier: everything in one group
    without: set[str] = set()
    if mod is not None:
        if mod.type == pp.AggModifierType.By:
            by = list(mod.labels)
        else:
            by = None
            without = set(mod.labels)
    without.add("__name__")
    vf = inner.fn

    def group_labels(lb: Labels) -> Labels:
        if by is not None:
            return {k: lb[k] for k in by if k in lb}
        return {k: v for k, v in lb.items() if k not in without}

    def run(src: SeriesSource, at: float) -> list[Sample]:
        groups: dict[tuple[tuple[str, str], ...], tuple[Labels, list[float]]] = {}
        for lb, v in vf(src, at):
            g = group_labels(lb)
            key = tuple(sorted(g.items()))
            entry = groups.get(key)
            if entry is None:
                groups[key] = (g, [v])
            else:
                entry[1].append(v)
        return [(g, agg(vs)) for g, vs in groups.values()]

    return _Vec(run)
