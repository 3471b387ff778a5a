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
async def s3(moto_server: MotoServer) -> AsyncIterator[Any]:  # noqa: F811
    """A raw aiobotocore S3 client against the moto server."""
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=moto_server.url,
        aws_access_key_id="test", aws_secret_access_key="test",
    ) as client:
        yield client


@pytest.fixture
async def bucket(s3: Any) -> AsyncIterator[str]:
    name = f"seamline-test-{uuid.uuid4().hex[:12]}"
    await s3.create_bucket(Bucket=name)
    yield name
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=name):
        for obj in page.get("Contents") or []:
            await s3.delete_object(Bucket=name, Key=obj["Key"])
    await s3.delete_bucket(Bucket=name)
