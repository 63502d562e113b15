"""benchmarks/longlag_grid.sh, the script behind the long-lag tables of docs/results.md: it
parses, refuses bad settings, and (slow) runs end to end in its SMOKE form and resumes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "longlag_grid.sh"
GRIDS = (
    "longlag-adding",
    "longlag-rnn-sgd-1M",
    "longlag-order-mult",
    "longlag-mult-lr2e-3",
    "longlag-sutskever",
    "longlag-variants",
)


def _env(**extra: str) -> dict:
    # the venv's `carousel` on PATH, as the script requires
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, **extra}


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_script_refuses_too_few_workers(tmp_path):
    r = subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, env=_env(WORKERS="2", OUT=str(tmp_path)),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "WORKERS must be at least 3, got 2" in r.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_smoke_run_writes_every_grid_and_resumes(tmp_path):
    env = _env(SMOKE="1", WORKERS="4", TOTAL="400", OUT=str(tmp_path))
    r = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    for grid in GRIDS:
        data = json.loads((tmp_path / grid / "results.json").read_text())
        assert data["runs"] and all(row["runs"] == row["seeds"] for row in data["rows"]), grid
    cells = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/cells/*.json")}
    r = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/cells/*.json")} == cells
    assert "not finished" not in r.stdout
