"""The package as users import it: the public API and the type information it ships."""

import importlib
from pathlib import Path

import carousel
from carousel.train.config import tomllib  # tomli before Python 3.11

ROOT = Path(__file__).resolve().parents[1]


def test_public_names_resolve():
    for name in carousel.__all__:
        assert hasattr(carousel, name), name
    for sub in ("esn", "optim", "functional", "analysis", "train", "tasks", "ctc"):
        module = importlib.import_module(f"carousel.{sub}")
        for name in getattr(module, "__all__", ()):
            assert hasattr(module, name), f"carousel.{sub}.{name}"


def test_ships_py_typed():
    """PEP 561: the marker lies in the package and the build includes it."""
    assert (Path(carousel.__file__).parent / "py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["carousel"]
