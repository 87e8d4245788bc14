"""The PromQL subset evaluated on a real in-memory MetricHistory."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from swarm_maint.alerts.promql import Sample, UnsupportedExpression, compile_expr
from swarm_maint.monitoring.history import MetricHistory

Row = tuple[Mapping[str, str], float]
Frame = Mapping[str, Sequence[Row]]


def families(frame: Frame) -> list[Metric]:
    out: list[Metric] = []
    for name, rows in frame.items():
        keys = sorted({k for labels, _ in rows for k in labels})
        fam: GaugeMetricFamily | CounterMetricFamily
        if name.endswith("_total"):
            fam = CounterMetricFamily(name, "test counter", labels=keys)
        else:
            fam = GaugeMetricFamily(name, "test gauge", labels=keys)
        for labels, v in rows:
            fam.add_metric([labels.get(k, "") for k in keys], v)
        out.append(fam)
    return out


def history(frames: Sequence[tuple[float, Frame]]) -> MetricHistory:
    h = MetricHistory(store=None, capacity=200, resolution=60, retention=3600)
    for ts, frame in frames:
        h.record(ts, families(frame))
    return h


def ev(h: MetricHistory, text: str, at: float) -> list[tuple[dict[str, str], float]]:
    res = compile_expr(text).evaluate(h, at)
    assert isinstance(res, list)
    return sorted(res, key=lambda s: sorted(s[0].items()))


def scalar(h: MetricHistory, text: str, at: float = 0.0) -> float:
    res = compile_expr(text).evaluate(h, at)
    assert isinstance(res, float)
    return res


TEMP = "swarm_gpu_temperature_celsius"


def temps(values: Mapping[str, float]) -> Frame:
    return {TEMP: [({"gpu": g}, v) for g, v in values.items()]}


@pytest.fixture
def gpus() -> MetricHistory:
    return history([(100.0, temps({"0": 80, "1": 90, "2": 70, "10": 60}))])


# -- selectors ---------------------------------------------------------------------------------


def test_selector_matchers(gpus: MetricHistory) -> None:
    def vals(text: str) -> dict[str, float]:
        return {lb["gpu"]: v for lb, v in ev(gpus, text, 100.0)}

    assert ev(gpus, TEMP + '{gpu="1"}', 100.0) == [({"__name__": TEMP, "gpu": "1"}, 90.0)]
    assert vals(TEMP) == {"0": 80, "1": 90, "2": 70, "10": 60}
    assert vals(TEMP + '{gpu!="1"}') == {"0": 80, "2": 70, "10": 60}
    assert vals(TEMP + '{gpu=~"1|2"}') == {"1": 90, "2": 70}  # anchored: not "10"
    assert vals(TEMP + '{gpu!~"1.*"}') == {"0": 80, "2": 70}
    assert vals(TEMP + '{gpu=~"1"}') == {"1": 90}
    assert vals(TEMP + '{missing=""}') == vals(TEMP)  # absent label matches the empty string
    assert vals('{__name__="' + TEMP + '", gpu="0"}') == {"0": 80}
    assert ev(gpus, "no_such_metric", 100.0) == []


def test_lookback_takes_newest_sample_and_a_missing_series_is_stale() -> None:
    frames: list[tuple[float, Frame]] = []
    for i in range(10):
        ts = 60.0 * i
        rows: list[Row] = [({"gpu": "0"}, float(i))]
        if ts <= 120:
            rows.append(({"gpu": "1"}, 100.0 + i))
        frames.append((ts, {TEMP: rows}))
    h = history(frames)
    assert ev(h, TEMP + '{gpu="0"}', 90.0) == [({"__name__": TEMP, "gpu": "0"}, 1.0)]
    # between frames the newest frame counts; gpu 1 is missing from the frame at 180: stale
    assert ev(h, TEMP + '{gpu="1"}', 179.0) == [({"__name__": TEMP, "gpu": "1"}, 102.0)]
    assert ev(h, TEMP + '{gpu="1"}', 180.0) == []
    assert [lb["gpu"] for lb, _ in ev(h, TEMP, 500.0)] == ["0"]
    # without newer frames the 300 s lookback ends a series too
    assert ev(h, TEMP + '{gpu="0"}', 840.0) == [({"__name__": TEMP, "gpu": "0"}, 9.0)]
    assert ev(h, TEMP + '{gpu="0"}', 841.0) == []
    assert ev(h, TEMP, -1.0) == []  # nothing at or before `at`


# -- operators ---------------------------------------------------------------------------------


def test_arithmetic_and_scalars(gpus: MetricHistory) -> None:
    assert ev(gpus, TEMP + '{gpu="0"} * 2 + 1', 100.0) == [({"gpu": "0"}, 161.0)]
    assert ev(gpus, '100 - ' + TEMP + '{gpu="1"}', 100.0) == [({"gpu": "1"}, 10.0)]
    assert ev(gpus, '-' + TEMP + '{gpu="2"}', 100.0) == [({"gpu": "2"}, -70.0)]
    assert ev(gpus, TEMP + '{gpu="0"} / 0', 100.0) == [({"gpu": "0"}, math.inf)]
    assert ev(gpus, TEMP + '{gpu="2"} % 8', 100.0) == [({"gpu": "2"}, 6.0)]
    assert scalar(gpus, "2 ^ 10") == 1024.0
    assert scalar(gpus, "(1 + 2) * -3") == -9.0
    assert scalar(gpus, "7 % 4") == 3.0
    assert scalar(gpus, "2 > bool 1") == 1.0
    assert scalar(gpus, "time()", 1234.5) == 1234.5
    assert math.isnan(scalar(gpus, "0 / 0"))


def test_comparisons_filter_or_return_bool(gpus: MetricHistory) -> None:
    assert ev(gpus, TEMP + " > 75", 100.0) == [
        ({"__name__": TEMP, "gpu": "0"}, 80.0),
        ({"__name__": TEMP, "gpu": "1"}, 90.0),
    ]
    # scalar on the left: the vector's value is kept
    assert ev(gpus, "75 > " + TEMP, 100.0) == [
        ({"__name__": TEMP, "gpu": "10"}, 60.0),
        ({"__name__": TEMP, "gpu": "2"}, 70.0),
    ]
    assert ev(gpus, TEMP + " >= bool 80", 100.0) == [
        ({"gpu": "0"}, 1.0), ({"gpu": "1"}, 1.0), ({"gpu": "10"}, 0.0), ({"gpu": "2"}, 0.0),
    ]
    assert [lb["gpu"] for lb, _ in ev(gpus, TEMP + " == 70", 100.0)] == ["2"]
    assert [lb["gpu"] for lb, _ in ev(gpus, TEMP + " != 70", 100.0)] == ["0", "1", "10"]
    assert [lb["gpu"] for lb, _ in ev(gpus, TEMP + " < 70", 100.0)] == ["10"]
    assert [lb["gpu"] for lb, _ in ev(gpus, TEMP + " <= 70", 100.0)] == ["10", "2"]


def fs_history() -> MetricHistory:
    size = "swarm_filesystem_size_bytes"
    avail = "swarm_filesystem_avail_bytes"
    return history([(10.0, {
        size: [({"mount": "/", "dev": "sda"}, 100.0), ({"mount": "/data", "dev": "sdb"}, 1000.0)],
        avail: [({"mount": "/", "dev": "sda"}, 5.0), ({"mount": "/data", "dev": "sdb"}, 500.0)],
        "swarm_mount_info": [({"mount": "/", "kind": "root"}, 1.0),
                             ({"mount": "/data", "kind": "data"}, 1.0)],
    })])


def test_vector_vector_matching() -> None:
    h = fs_history()
    expr = ("(swarm_filesystem_size_bytes - swarm_filesystem_avail_bytes)"
            " / swarm_filesystem_size_bytes > 0.9")
    assert ev(h, expr, 10.0) == [({"dev": "sda", "mount": "/"}, 0.95)]
    assert ev(h, "swarm_filesystem_avail_bytes / swarm_filesystem_size_bytes", 10.0) == [
        ({"dev": "sda", "mount": "/"}, 0.05), ({"dev": "sdb", "mount": "/data"}, 0.5),
    ]
    # different label sets: nothing matches unless restricted with on() / ignoring()
    assert ev(h, "swarm_filesystem_size_bytes * swarm_mount_info", 10.0) == []
    assert ev(h, "swarm_filesystem_size_bytes * on(mount) swarm_mount_info", 10.0) == [
        ({"mount": "/"}, 100.0), ({"mount": "/data"}, 1000.0),
    ]
    assert ev(h, "swarm_mount_info * ignoring(kind) swarm_filesystem_size_bytes", 10.0) == []
    assert ev(h, "swarm_filesystem_size_bytes > ignoring(dev) swarm_mount_info", 10.0) == []
    assert ev(h, "swarm_mount_info < bool ignoring(kind, dev) swarm_filesystem_size_bytes",
              10.0) == [({"mount": "/"}, 1.0), ({"mount": "/data"}, 1.0)]
    assert ev(h, "swarm_filesystem_size_bytes > bool on(mount) swarm_mount_info", 10.0) == [
        ({"mount": "/"}, 1.0), ({"mount": "/data"}, 1.0),
    ]
    # filtering comparison keeps the left side's labels and value
    assert ev(h, "swarm_filesystem_size_bytes > swarm_filesystem_avail_bytes * 10", 10.0) == [
        ({"__name__": "swarm_filesystem_size_bytes", "dev": "sda", "mount": "/"}, 100.0),
    ]


def test_ignoring_drops_the_ignored_labels() -> None:
    h = history([(0.0, {
        "a": [({"x": "1", "side": "l"}, 3.0)],
        "b": [({"x": "1", "side": "r"}, 4.0)],
    })])
    assert ev(h, "a + b", 0.0) == []
    assert ev(h, "a + ignoring(side) b", 0.0) == [({"x": "1"}, 7.0)]
    assert ev(h, "a + on(x) b", 0.0) == [({"x": "1"}, 7.0)]


def test_duplicate_matches_are_an_error() -> None:
    h = history([(0.0, {"a": [({"x": "1", "y": "1"}, 1.0), ({"x": "1", "y": "2"}, 2.0)],
                        "b": [({"x": "1"}, 1.0)]})])
    with pytest.raises(ValueError, match="duplicate series on the left"):
        ev(h, "a + on(x) b", 0.0)
    with pytest.raises(ValueError, match="duplicate series on the right"):
        ev(h, "b + on(x) a", 0.0)


def test_set_operators() -> None:
    h = history([(0.0, {
        "up": [({"job": "a", "i": "1"}, 1.0), ({"job": "b", "i": "2"}, 0.0)],
        "seen": [({"job": "a", "i": "1"}, 5.0), ({"job": "c", "i": "3"}, 7.0)],
        "flag": [({"job": "b"}, 1.0)],
    })])

    def jobs(text: str) -> list[tuple[str, str, float]]:
        return [(lb["__name__"], lb["job"], v) for lb, v in ev(h, text, 0.0)]

    assert jobs("up and seen") == [("up", "a", 1.0)]
    assert jobs("up unless seen") == [("up", "b", 0.0)]
    assert jobs("up or seen") == [("seen", "c", 7.0), ("up", "a", 1.0), ("up", "b", 0.0)]
    assert jobs("up and on(job) flag") == [("up", "b", 0.0)]
    assert jobs("up unless ignoring(i) flag") == [("up", "a", 1.0)]
    assert jobs("up == 0 or seen > 6") == [("seen", "c", 7.0), ("up", "b", 0.0)]
    assert jobs("seen or up") == [("seen", "a", 5.0), ("seen", "c", 7.0), ("up", "b", 0.0)]


# -- functions ---------------------------------------------------------------------------------

XID = "swarm_gpu_xid_errors_total"


def test_rate_and_increase_handle_counter_resets() -> None:
    values = [10.0, 20.0, 30.0, 5.0, 15.0]  # reset after 30
    h = history([(60.0 * i, {XID: [({"gpu": "0", "code": "48"}, v)]})
                 for i, v in enumerate(values)])
    # all five samples (0..240) lie in (240 - 300, 240]: increase 20 + 5 + 10 = 35 in 240 s
    assert ev(h, f"rate({XID}[5m])", 240.0) == [({"code": "48", "gpu": "0"}, 35.0 / 240.0)]
    assert ev(h, f"increase({XID}[5m])", 240.0) == [({"code": "48", "gpu": "0"}, 43.75)]
    # (60, 180]: 30 -> 5 is a reset: 5 + 0 ... samples 120:30, 180:5 -> increase 5 in 60 s
    assert ev(h, f"rate({XID}[2m])", 180.0) == [({"code": "48", "gpu": "0"}, 5.0 / 60.0)]
    # one sample in the window: no result
    assert ev(h, f"rate({XID}[1m])", 180.0) == []
    assert ev(h, f"delta({XID}[5m])", 240.0) == [({"code": "48", "gpu": "0"}, 5.0 * 300 / 240)]


def test_a_counter_born_while_watching_counts_from_zero() -> None:
    """The first XID of a code creates its series at 1: increase() must see that 1."""
    frames: list[tuple[float, Frame]] = []
    for i in range(10):
        rows: list[Row] = [({"gpu": "0", "code": "13"}, 4.0)]  # existed before the agent
        if i >= 6:
            rows.append(({"gpu": "0", "code": "79"}, 1.0 if i < 8 else 2.0))
        frames.append((float(i), {XID: rows}))
    h = history(frames)
    assert ev(h, f"increase({XID}[10m])", 6.0) == [
        ({"code": "13", "gpu": "0"}, 0.0), ({"code": "79", "gpu": "0"}, 1.0)]
    assert ev(h, f"increase({XID}[10m])", 9.0) == [
        ({"code": "13", "gpu": "0"}, 0.0), ({"code": "79", "gpu": "0"}, 2.0)]
    assert ev(h, f"rate({XID}[10s])", 9.0)[1] == ({"code": "79", "gpu": "0"}, 0.2)
    # a series seen from the first frames is not taken to start at 0 (one sample: nothing)
    assert ev(h, f'increase({XID}{{code="13"}}[1s])', 9.0) == []
    # once its birth is out of the window, the usual extrapolation applies
    # (6, 9] holds 1, 2, 2 over 2 s: 0.5/s extrapolated to 3 s
    assert ev(h, f"increase({XID}[3s])", 9.0)[1] == ({"code": "79", "gpu": "0"}, 1.5)


def test_over_time_functions() -> None:
    h = history([(0.0, temps({"0": 80})), (30.0, temps({"0": 84})), (60.0, temps({"0": 91}))])

    def one(text: str) -> tuple[dict[str, str], float]:
        res = ev(h, text, 60.0)
        assert len(res) == 1
        return res[0]

    sel = TEMP + "[1m]"  # (0, 60]: 84 and 91, the sample at 0 is outside
    assert one(f"avg_over_time({sel})") == ({"gpu": "0"}, 87.5)
    assert one(f"min_over_time({sel})") == ({"gpu": "0"}, 84.0)
    assert one(f"max_over_time({sel})") == ({"gpu": "0"}, 91.0)
    assert one(f"sum_over_time({sel})") == ({"gpu": "0"}, 175.0)
    assert one(f"count_over_time({sel})") == ({"gpu": "0"}, 2.0)
    assert one(f"last_over_time({sel})") == ({"__name__": TEMP, "gpu": "0"}, 91.0)
    assert one(f"count_over_time({TEMP}[61s])") == ({"gpu": "0"}, 3.0)
    assert ev(h, f"avg_over_time({sel})", 200.0) == []
    assert ev(h, f"avg_over_time({TEMP}[1m]) > 85", 60.0) == [({"gpu": "0"}, 87.5)]
    assert ev(h, f"avg_over_time({TEMP}[1m]) > 85", 30.0) == []


def test_absent(gpus: MetricHistory) -> None:
    assert ev(gpus, f'absent({TEMP}{{gpu="0"}})', 100.0) == []
    assert ev(gpus, f'absent({TEMP}{{gpu="9", host=~"a.*"}})', 100.0) == [({"gpu": "9"}, 1.0)]
    assert ev(gpus, 'absent(nothing{job="x", job="y"})', 100.0) == [({}, 1.0)]
    assert ev(gpus, f"absent({TEMP} > 1000)", 100.0) == [({}, 1.0)]
    assert ev(gpus, f"absent({TEMP})", 1000.0) == [({}, 1.0)]  # gone stale


def test_abs_clamp_vector_and_time(gpus: MetricHistory) -> None:
    assert ev(gpus, f'abs(-{TEMP}{{gpu="0"}})', 100.0) == [({"gpu": "0"}, 80.0)]
    assert ev(gpus, f'clamp_min({TEMP}{{gpu=~"0|2"}}, 75)', 100.0) == [
        ({"gpu": "0"}, 80.0), ({"gpu": "2"}, 75.0),
    ]
    assert ev(gpus, f'clamp_max({TEMP}{{gpu=~"0|2"}}, 75)', 100.0) == [
        ({"gpu": "0"}, 75.0), ({"gpu": "2"}, 70.0),
    ]
    assert ev(gpus, "vector(1)", 100.0) == [({}, 1.0)]  # the Watchdog rule
    assert ev(gpus, "vector(time() - 40)", 100.0) == [({}, 60.0)]


def test_aggregations() -> None:
    h = history([(0.0, {TEMP: [
        ({"gpu": "0", "node": "a"}, 80.0), ({"gpu": "1", "node": "a"}, 90.0),
        ({"gpu": "0", "node": "b"}, 70.0),
    ]})])
    assert ev(h, f"sum({TEMP})", 0.0) == [({}, 240.0)]
    assert ev(h, f"sum by (node) ({TEMP})", 0.0) == [({"node": "a"}, 170.0),
                                                      ({"node": "b"}, 70.0)]
    assert ev(h, f"avg by (gpu) ({TEMP})", 0.0) == [({"gpu": "0"}, 75.0), ({"gpu": "1"}, 90.0)]
    assert ev(h, f"max without (gpu) ({TEMP})", 0.0) == [({"node": "a"}, 90.0),
                                                          ({"node": "b"}, 70.0)]
    assert ev(h, f"min without (node) ({TEMP})", 0.0) == [({"gpu": "0"}, 70.0),
                                                           ({"gpu": "1"}, 90.0)]
    assert ev(h, f"count({TEMP} > 75)", 0.0) == [({}, 2.0)]
    assert ev(h, f"count without () ({TEMP})", 0.0) == [
        ({"gpu": "0", "node": "a"}, 1.0), ({"gpu": "0", "node": "b"}, 1.0),
        ({"gpu": "1", "node": "a"}, 1.0),
    ]
    assert ev(h, "sum(nothing)", 0.0) == []


def test_xid_alert_rule() -> None:
    frames: list[tuple[float, Frame]] = []
    for i in range(6):
        rows: list[Row] = [
            ({"gpu": "0", "code": "48"}, 0.0 if i < 4 else 2.0),
            ({"gpu": "0", "code": "13"}, float(i)),
            ({"gpu": "1", "code": "79"}, 0.0),
            ({"gpu": "1", "code": "479"}, float(i)),  # not matched: the regex is anchored
        ]
        frames.append((60.0 * i, {XID: rows}))
    h = history(frames)
    expr = f'sum by (gpu) (increase({XID}{{code=~"48|79"}}[5m])) > 0'
    assert ev(h, expr, 180.0) == []
    res = ev(h, expr, 300.0)  # (0, 300]: 0, 0, 0, 2, 2 over 240 s, scaled to 300 s
    assert res == [({"gpu": "0"}, 2.5)]


def test_health_status_rule() -> None:
    h = history([(0.0, {"swarm_health_status": [({"check": "disk"}, 2.0),
                                                ({"check": "gpu"}, 0.0)]})])
    assert ev(h, "swarm_health_status == 2", 0.0) == [
        ({"__name__": "swarm_health_status", "check": "disk"}, 2.0),
    ]


def test_expr_keeps_text_and_kind() -> None:
    e = compile_expr("vector(1)")
    assert (e.text, e.kind) == ("vector(1)", "vector")
    assert compile_expr("1 + 1").kind == "scalar"


# -- rejections --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"max_over_time(rate({XID}[5m])[30m:1m])", "subqueries are not supported"),
        (f"{TEMP} offset 5m", "offset modifiers are not supported"),
        (f"{TEMP} @ 100", "@ modifiers are not supported"),
        (f"rate({XID}[5m] offset 1m)", "offset modifiers are not supported"),
        ("histogram_quantile(0.9, rate(x_bucket[5m]))",
         "function histogram_quantile is not supported"),
        (f"{TEMP} * on(gpu) group_left(node) swarm_gpu_info",
         "group_left/group_right are not supported"),
        (f"swarm_gpu_info * on(gpu) group_right {TEMP}",
         "group_left/group_right are not supported"),
        (f"topk(3, {TEMP})", "aggregation topk is not supported"),
        ('{__name__=~"swarm_.*"}', "selectors without a metric name are not supported"),
        (f"{TEMP}[5m]", "range vector results are not supported"),
        ('"text"', "string literals are not supported"),
        ("sort(a)", "function sort is not supported"),
        ("a atan2 b", "operator atan2 is not supported"),
    ],
)
def test_unsupported_constructs_are_named(text: str, message: str) -> None:
    with pytest.raises(UnsupportedExpression, match=message):
        compile_expr(text)


def test_syntax_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid PromQL expression") as err:
        compile_expr("sum(rate(foo[5m])")
    assert not isinstance(err.value, UnsupportedExpression)


# -- property ----------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), max_size=8),
    c=st.floats(allow_nan=False, allow_infinity=False, width=32),
)
def test_greater_than_filters_exactly(values: list[float], c: float) -> None:
    h = history([(0.0, {"g": [({"i": str(i)}, v) for i, v in enumerate(values)]})])
    res: list[Sample] = ev(h, f"g > {c!r}", 0.0)
    assert {lb["i"]: v for lb, v in res} == {str(i): v for i, v in enumerate(values) if v > c}
    assert all(lb["__name__"] == "g" for lb, _ in res)
