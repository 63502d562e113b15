"""The Mackey-Glass experiments and the ``carousel esn`` commands (small sizes; the full
Jaeger & Haas run is marked slow)."""

import dataclasses
import math

import pytest

from carousel.cli import main
from carousel.esn.experiments import (
    SEARCH_START,
    JaegerHaasParams,
    jaeger_haas_data,
    jaeger_haas_nrmse84,
    search_jaeger_haas,
)


def test_jaeger_haas_small_network_predicts_84_steps():
    params = dataclasses.replace(SEARCH_START, units=100, connectivity=0.1)
    score = jaeger_haas_nrmse84(params, trials=10, region="validation")
    assert math.isfinite(score) and score < 0.1
    x, d = jaeger_haas_data(100)
    assert x.shape == d.shape == (100,)
    with pytest.raises(ValueError, match="region must be 'test' or 'validation'"):
        jaeger_haas_nrmse84(params, region="train")


def test_search_runs_within_budget_and_is_seeded():
    start = dataclasses.replace(JaegerHaasParams(), units=60, connectivity=0.2)
    a = search_jaeger_haas(budget_seconds=0.0, validation_trials=5, test_trials=5, start=start)
    assert a.evaluated == 1 and a.best == start
    assert math.isfinite(a.test_nrmse84)


def test_cli_mackey_glass(capsys):
    assert main(["esn", "mackey-glass", "--units", "50", "--timesteps", "600"]) == 0
    out = capsys.readouterr().out
    assert "R^2" in out and "units 50" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["mackey-glass", "--units", "0"], "units must be >= 1, got 0"),
        (["mackey-glass", "--threads", "-2"], "--threads must be >= 0, got -2"),
        (["jaeger-haas", "--reservoirs", "0"], "--reservoirs must be >= 1, got 0"),
        (["search", "--budget", "-1"], "--budget must be >= 0 seconds, got -1"),
    ],
)
def test_cli_bad_arguments_are_one_line_and_status_2(capsys, argv, message):
    """Not a traceback (before: the library's ValueError, a ZeroDivisionError for no
    reservoirs, torch's error for negative threads, a search for a negative budget)."""
    assert main(["esn", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("carousel esn: ") and message in err and "Traceback" not in err


@pytest.mark.slow
def test_jaeger_haas_reaches_the_papers_nrmse84():
    # Jaeger & Haas 2004: NRMSE84 about 10^-4.2 with 1000 units and output feedback.
    score = jaeger_haas_nrmse84(JaegerHaasParams(), trials=100, region="test")
    assert math.log10(score) <= -4.2
