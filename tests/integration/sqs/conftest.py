from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.integration.services import MotoServer, moto_server  # noqa: F401  (fixture)

AWS = {"region": "us-east-1", "access_key_id": "test", "secret_access_key": "test"}


def aws(endpoint: str) -> dict[str, Any]:
    return {**AWS, "endpoint_url": endpoint}


@pytest.fixture
async def sqs(moto_server: MotoServer) -> AsyncIterator[Any]:  # noqa: F811
    """A raw aiobotocore SQS client against the moto server."""
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "sqs", region_name="us-east-1", endpoint_url=moto_server.url,
        aws_access_key_id="test", aws_secret_access_key="test",
    ) as client:
        yield client


@pytest.fixture
async def queue(sqs: Any) -> AsyncIterator[str]:
    name = f"seamline-test-{uuid.uuid4().hex[:12]}"
    url = (await sqs.create_queue(QueueName=name))["QueueUrl"]
    yield url
    await sqs.delete_queue(QueueUrl=url)


@pytest.fixture
async def fifo_queue(sqs: Any) -> AsyncIterator[str]:
    name = f"seamline-test-{uuid.uuid4().hex[:12]}.fifo"
    url = (await sqs.create_queue(QueueName=name, Attributes={"FifoQueue": "true"}))["QueueUrl"]
    yield url
    await sqs.delete_queue(QueueUrl=url)
