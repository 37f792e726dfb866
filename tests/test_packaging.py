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


def test_every_data_file_of_a_package_is_in_the_wheel():
    # Templates, scripts and styles (the console's, the docs page's) are package data: a file
    # no pattern matches would be missing from an installed server, not from a checkout.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]
    for package in ("notify_server.console", "notify_server.openapi"):
        folder = ROOT / "src" / Path(*package.split("."))
        files = {
            path.relative_to(folder)
            for path in folder.rglob("*")
            if path.is_file() and path.suffix != ".py" and "__pycache__" not in path.parts
        }
        shipped = {path for path in files if any(path.match(p) for p in patterns[package])}
        assert files == shipped, f"{package}: not in package-data: {files - shipped}"
