"""Shared fixtures: where the conformance data lives, service URLs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = Path(os.environ.get("SEAMLINE_CONFORMANCE", ROOT.parent / "shared" / "conformance"))


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    """The official conformance data kept beside the repository (never copied into it)."""
    if not CONFORMANCE.is_dir():
        raise RuntimeError(f"conformance data not found at {CONFORMANCE}; set SEAMLINE_CONFORMANCE")
    return CONFORMANCE


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


def _hypothesis_profiles() -> None:
    """In CI, property tests are reproducible (derandomized) and free of wall-clock deadlines."""
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
    settings.register_profile("dev", deadline=None)
    settings.load_profile("ci" if os.environ.get("CI") else "dev")


_hypothesis_profiles()
