"""Each package says what it exports, and exports what it says (httpx's test, in small)."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["sidegate.policy", "sidegate.audit", "sidegate.broker"])
def test_all_names_exist_and_nothing_public_is_missing(package: str) -> None:
    module = importlib.import_module(package)
    exported = set(module.__all__)
    assert all(hasattr(module, name) for name in exported)
    submodules = {
        name
        for name, value in vars(module).items()
        if getattr(value, "__name__", "").startswith(package + ".")
    }
    assert submodules <= exported, submodules - exported


def test_the_top_level_package_exports_its_version() -> None:
    import sidegate

    assert sidegate.__all__ == ["__version__"] and sidegate.__version__
