"""A bounded schemathesis run: generated requests from /openapi.json against a real server.

The server (a tiny random model, answers of at most 8 tokens) must answer every
generated request, valid or not, without a 5xx and as its document says: only
documented status codes and fields, schema-valid requests accepted, schema-invalid
ones refused, undeclared methods a 405 with the right `Allow` header. The run is
bounded by examples per operation and by time; its seed is fixed so a failure
reproduces.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from serve_process import running_server

pytestmark = pytest.mark.slow

# A tool call's `arguments` must be a JSON object written as a string, which a JSON
# Schema cannot say of a string: schema-valid histories with other text are refused
# (a 400 naming the field) on the two operations that take messages.
CONFIG = """
[[operations]]
include-path = "/tokenize"
checks.positive_data_acceptance.enabled = false

[[operations]]
include-path = "/v1/chat/completions"
checks.positive_data_acceptance.enabled = false
"""


@pytest.fixture(scope="module")
def url(tiny_folder):
    with running_server(str(tiny_folder), "--max-tokens-limit", "8") as base:
        yield base


def test_generated_requests_find_no_5xx_and_no_conformance_failure(url, tmp_path):
    pytest.importorskip("schemathesis")
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "--no-color", "--config-file", str(config),
        "run", url + "/openapi.json", "--workers", "1", "--max-examples", "10",
        "--max-time", "120", "--phases", "examples,coverage,fuzzing", "--seed", "17",
        "--continue-on-failure",  # every check: schemathesis 4 runs all by default
        "--report-dir", str(tmp_path / "report"),
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "generated" in run.stdout  # it did run requests


def test_tokenize_null_text_and_empty_messages_is_a_400(url):
    r = httpx.post(url + "/tokenize", json={"text": None, "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_the_document_lists_error_codes_not_fastapi_422(url):
    doc = httpx.get(url + "/openapi.json").json()
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "404", "413", "500", "503", "504"} <= set(chat) and "422" not in chat
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_an_undeclared_method_is_a_405_with_allow(url):
    r = httpx.request("TRACE", url + "/documents")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    r = httpx.request("PUT", url + "/documents/ask")  # not DELETE /documents/{name}'s
    assert r.status_code == 405 and r.headers["allow"] == "POST"
