from __future__ import annotations

import uuid

import pytest
from tests.integration.services import require


@pytest.fixture
def mqtt_url() -> str:
    return require("mqtt")


@pytest.fixture
def topic() -> str:
    return f"seamline-test/{uuid.uuid4().hex[:12]}"
