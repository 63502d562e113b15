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


def test_subpackages_load_on_first_use():
    """``import carousel`` then ``carousel.train.load_config(...)``, as the README writes it:
    every subpackage is an attribute, imported when first used (a fresh interpreter, where
    nothing else imported it)."""
    import subprocess
    import sys

    subs = sorted(
        p.name
        for p in (ROOT / "src" / "carousel").iterdir()
        if p.is_dir() and (p / "__init__.py").is_file()
    )
    code = (
        "import sys, carousel\n"
        "assert 'carousel.train' not in sys.modules\n"
        f"for name in {subs!r}:\n"
        "    assert getattr(carousel, name).__name__ == 'carousel.' + name, name\n"
        "    assert name in dir(carousel), name\n"
        "assert carousel.train.load_config is not None\n"
        "try:\n"
        "    carousel.no_such_thing\n"
        "except AttributeError as e:\n"
        "    assert 'no_such_thing' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
