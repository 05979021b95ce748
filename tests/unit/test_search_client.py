"""Building the OpenSearch client from a URL (no requests are sent)."""

from __future__ import annotations

import base64

import pytest

from clickstream.errors import ConfigError
from clickstream.search.client import make_client, redact_url


def _connection(url: str):
    return make_client(url).transport.connection_pool.connections[0]


def test_aiven_style_https_url_with_credentials() -> None:
    conn = _connection("https://avnadmin:s3cr%40t@os-demo.aivencloud.com:24947")
    assert conn.host == "https://os-demo.aivencloud.com:24947"
    assert conn.use_ssl is True
    expected = base64.b64encode(b"avnadmin:s3cr@t").decode()
    assert conn.headers["authorization"] == f"Basic {expected}"
    assert conn.timeout == 30.0


def test_plain_local_http_url() -> None:
    conn = _connection("http://127.0.0.1:19200")
    assert conn.host == "http://127.0.0.1:19200"
    assert conn.use_ssl is False
    assert "authorization" not in conn.headers
    # The consumer's two writing threads each keep a connection open.
    assert conn.pool.pool.maxsize == 4


def test_default_ports_and_path_prefix() -> None:
    assert _connection("https://search.example").host == "https://search.example:443"
    assert _connection("http://search.example").host == "http://search.example:9200"
    conn = _connection("https://search.example/opensearch/")
    assert conn.url_prefix == "/opensearch"


@pytest.mark.parametrize(
    "url", ["", "127.0.0.1:9200", "ftp://host:21", "https://", "http://host:notaport"]
)
def test_invalid_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        make_client(url)


def test_redact_url_hides_credentials() -> None:
    assert redact_url("https://user:pw@host:443/x") == "https://host:443/x"
    assert redact_url("http://127.0.0.1:19200") == "http://127.0.0.1:19200"
