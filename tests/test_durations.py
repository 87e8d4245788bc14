import pytest

from swarm_maint.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600), ("7d", 604800), ("1h30m", 5400),
     ("1.5s", 1.5), ("2w", 1209600)],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "s", "5x", "1h 30m", "-5s", "5s5", "ms"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0.5, 1, 30, 90, 3600, 5400, 86400 * 7, 0.001])
def test_format_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_format_is_short() -> None:
    assert format_duration(60) == "1m"
    assert format_duration(5400) == "1h30m"
    assert format_duration(0.5) == "500ms"
