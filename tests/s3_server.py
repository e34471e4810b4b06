"""A real S3-compatible server for tests: moto's standalone server (from PyPI) in its own process."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.local_server import served


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str = "test-access-key"
    secret_key: str = "test-secret-key-never-logged"
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """The standard variables pyarrow, LanceDB and boto3 read."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ALLOW_HTTP": "true",
        }

    def options(self) -> dict[str, str]:
        """The same, as store.storage_options / input.storage_options."""
        return {
            "aws_endpoint": self.endpoint,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "aws_region": self.region,
            "allow_http": "true",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )


@contextmanager
def moto_server() -> Iterator[S3Server]:
    from tests.local_cluster import free_port

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with served([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], f"{endpoint}/moto-api/"):
        yield S3Server(endpoint)
