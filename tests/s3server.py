"""A real S3 API for tests: moto's server on loopback, started once per session, emptied after every test.

Use it from a test module with ``from .s3server import s3_server, create_bucket  # noqa: F401``, or for a whole
suite with ``pytest_plugins = ["tests.s3server"]`` in conftest.py. A test that asks for ``s3_server`` gets:

- the endpoint URL ("http://127.0.0.1:PORT"),
- AWS_ENDPOINT_URL, test credentials and region set in os.environ for that test only, with every other AWS
  variable that could point elsewhere (profile, config files, S3-specific endpoint) removed,
- an empty S3 once it ends (buckets made by one test never reach the next).
"""
from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Iterator

import pytest

REGION = "us-east-1"
_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    # Keep the developer's own ~/.aws out of the tests.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3",
          "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")


class _Server:
    """One moto server per process, started by the first test that needs it and stopped when pytest ends, however
    many modules import the fixture (each import is a separate fixture definition to pytest)."""

    def __init__(self) -> None:
        self.server = None
        self.endpoint = ""
        self.log_level = logging.NOTSET

    def start(self, config: pytest.Config) -> str:
        if self.server is None:
            from moto.server import ThreadedMotoServer

            # werkzeug logs every request at INFO; keep test output to what matters.
            werkzeug_log = logging.getLogger("werkzeug")
            self.log_level = werkzeug_log.level
            werkzeug_log.setLevel(logging.WARNING)
            # Port 0: the OS picks a free port as the socket binds, so no race with other processes.
            self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self.server.start()
            host, port = self.server.get_host_and_port()
            self.endpoint = f"http://{host}:{port}"
            config.add_cleanup(self.stop)
        return self.endpoint

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
            logging.getLogger("werkzeug").setLevel(self.log_level)


_SERVER = _Server()


@pytest.fixture()
def s3_server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Endpoint URL of an empty S3, with the AWS environment pointing at it for this test (restored after).
    The server itself lives for the whole session; only its content and the environment are per test."""
    endpoint = _SERVER.start(request.config)
    for name in _UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in _ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    try:
        yield endpoint
    finally:
        reset_s3(endpoint)


def reset_s3(endpoint: str) -> None:
    """Drop every bucket and object on the moto server at ``endpoint``."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def create_bucket(endpoint: str, name: str) -> str:
    """Create bucket ``name`` (3-63 lowercase letters, digits, hyphens) on ``endpoint``; returns "s3://name"."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    client.create_bucket(Bucket=name)
    return f"s3://{name}"
