"""The wheel lists its packages by hand (alembic/ ships as notify_server_migrations), so a new
package missing from pyproject.toml would only show in the container. This catches it."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_in_the_wheel():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    source = ROOT / "src"
    packages = {
        ".".join(init.parent.relative_to(source).parts) for init in source.rglob("__init__.py")
    }
    assert packages <= listed, f"missing from [tool.setuptools] packages: {packages - listed}"
