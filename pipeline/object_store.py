"""Object-store settings in one vocabulary (LanceDB's storage_options names) translated for pyarrow and boto3.
Unset values fall back to the standard AWS_* environment variables, which all three libraries read themselves.
(The lease that keeps two runs off one set of tables in a bucket is in locks.py.)"""

from __future__ import annotations

from dataclasses import dataclass

_ALIASES = {
    "endpoint": ("aws_endpoint", "endpoint", "aws_endpoint_url", "endpoint_url"),
    "region": ("aws_region", "region"),
    "access_key": ("aws_access_key_id", "access_key_id"),
    "secret_key": ("aws_secret_access_key", "secret_access_key"),
    "session_token": ("aws_session_token", "session_token"),
    "allow_http": ("allow_http", "aws_allow_http"),
}


@dataclass(frozen=True)
class S3Options:
    endpoint: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    allow_http: bool = False

    @classmethod
    def from_options(cls, options: dict[str, str]) -> S3Options:
        lowered = {k.lower(): v for k, v in options.items()}
        values = {}
        for name, keys in _ALIASES.items():
            found = next((lowered[k] for k in keys if k in lowered), None)
            if found is not None:
                values[name] = str(found).lower() in ("1", "true", "yes") if name == "allow_http" else found
        return cls(**values)

    def pyarrow_kwargs(self) -> dict:
        kwargs = {
            "endpoint_override": self.endpoint,
            "region": self.region,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "session_token": self.session_token,
        }
        if self.endpoint and (self.allow_http or self.endpoint.startswith("http://")):
            kwargs["scheme"] = "http"
        return {k: v for k, v in kwargs.items() if v is not None}

    def boto3_kwargs(self) -> dict:
        kwargs = {
            "endpoint_url": self.endpoint,
            "region_name": self.region,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "aws_session_token": self.session_token,
        }
        return {k: v for k, v in kwargs.items() if v is not None}


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key.strip("/")
