"""The runnable examples (the README's journeys) keep working and keep learning."""

import runpy
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _main(name: str):
    return runpy.run_path(str(EXAMPLES / name))["main"]


def test_quickstart_learns_to_count():
    assert _main("quickstart.py")(steps=150) > 0.9


def test_esn_forecasts_84_steps_in_closed_loop():
    torch.set_num_threads(1)
    assert _main("esn_forecast.py")(units=300) < 0.05


def test_hessian_free_learns_addition():
    assert _main("hessian_free.py")() < 0.02


@pytest.mark.slow
def test_esn_forecast_full_size():
    assert _main("esn_forecast.py")() < 0.02
