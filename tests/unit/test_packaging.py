"""The wheel holds every folder of the code: pyproject lists the packages by hand (the
three top-level folders install under ``cued.*``), so a new folder must be listed too."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_folder_of_the_code_is_a_listed_package() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = set()
    for package, folder in setuptools["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            on_disk.add(".".join((package, *relative)))
    assert on_disk <= listed, sorted(on_disk - listed)


def test_the_web_uis_pages_and_assets_are_package_data() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    data = setuptools["package-data"]
    ui = ROOT / "daemon" / "web" / "ui"
    for folder in ("templates", "static"):
        package = f"cued.daemon.web.ui.{folder}"
        assert package in setuptools["packages"]
        patterns = data[package]
        files = [p for p in (ui / folder).iterdir() if p.is_file()]
        assert files
        assert all(any(f.match(pattern) for pattern in patterns) for f in files), files
