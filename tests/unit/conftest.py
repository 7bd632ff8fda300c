"""Pure unit tests: no database, no Redis."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def clean_state() -> None:
    """Overrides the stack-cleaning fixture of tests/conftest.py."""
