"""The metric-line format of command trials (pbt_actors.model.metric_lines): what counts as a
report, a checkpoint, ordinary output, or a malformed line that fails the attempt."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbt_actors.model.metric_lines import (
    CheckpointLine,
    MetricLine,
    MetricLineError,
    format_metric_line,
    parse_line,
)


def test_text_metric_line() -> None:
    assert parse_line("pbt: step=120 acc=0.93 loss=0.21\n") == MetricLine(120, {"acc": 0.93, "loss": 0.21})
    assert parse_line("  pbt:step=3   acc=1e-3") == MetricLine(3, {"acc": 0.001})


def test_json_metric_line() -> None:
    assert parse_line('{"pbt": {"step": 7, "acc": 0.5, "n": 3}}') == MetricLine(7, {"acc": 0.5, "n": 3.0})
    assert parse_line('{"pbt": {"checkpoint": 40}}') == CheckpointLine(40)


def test_checkpoint_line() -> None:
    assert parse_line("pbt: checkpoint step=100") == CheckpointLine(100)


@pytest.mark.parametrize("line", ["epoch 3 acc=0.9", "", "step=3 acc=1", '{"other": 1}', '{"pbt" broken json',
                                  "PBT: step=1 acc=2", "pbtx: step=1"])
def test_other_output_is_not_a_report(line: str) -> None:
    assert parse_line(line) is None


@pytest.mark.parametrize("line", [
    "pbt: acc=0.9",  # no step
    "pbt: step=abc acc=0.9",
    "pbt: step=1.5 acc=0.9",
    "pbt: step=-1 acc=0.9",
    "pbt: step=nan acc=0.9",
    "pbt: step=3 acc=high",
    "pbt: step=3 acc",
    "pbt: step=3 acc=1 acc=2",
    "pbt: step=3 =1",
    "pbt: checkpoint",
    "pbt: checkpoint step=x",
    "pbt: checkpoint step=3 acc=1",
    '{"pbt": {"acc": 1}}',
    '{"pbt": {"step": "3", "acc": 1}}',
    '{"pbt": {"step": 3, "acc": "1"}}',
    '{"pbt": {"step": true, "acc": 1}}',
    '{"pbt": {"step": 3, "acc": null}}',
    '{"pbt": [3]}',
    '{"pbt": {"checkpoint": 3, "acc": 1}}',
])
def test_malformed_lines_are_errors_naming_the_line(line: str) -> None:
    with pytest.raises(MetricLineError) as info:
        parse_line(line)
    assert repr(line.strip()[:20])[1:-1] in str(info.value)


def test_non_finite_values_are_numbers_that_lose() -> None:
    """As with ctx.report: NaN and infinities are accepted (the trial loses; early stopping
    treats them as divergence); an overflowing literal is infinity."""
    parsed = parse_line("pbt: step=5 loss=nan acc=-inf big=1e999")
    assert isinstance(parsed, MetricLine)
    assert math.isnan(parsed.metrics["loss"]) and parsed.metrics["acc"] == -math.inf
    assert parsed.metrics["big"] == math.inf
    json_line = parse_line('{"pbt": {"step": 5, "loss": NaN, "acc": Infinity}}')
    assert isinstance(json_line, MetricLine) and math.isnan(json_line.metrics["loss"])


@given(st.integers(0, 10**12), st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_/.]{0,10}", fullmatch=True)
                                               .filter(lambda n: n != "step"),
                                               st.floats(allow_nan=False), max_size=5))
def test_format_then_parse_is_exact(step: int, metrics: dict[str, float]) -> None:
    parsed = parse_line(format_metric_line(step, **metrics))
    assert parsed == MetricLine(step, metrics)
