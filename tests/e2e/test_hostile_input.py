"""Hostile HTTP input, sent to the app under the real local host: every one gets a JSON 4xx with a named code and a
message saying what to change, never a 500, an HTML page or a dropped connection, and the host answers afterwards."""

from __future__ import annotations

import socket

import requests

from emulators.functions_host import FUNCTION_KEY

from .app import Stack


def raw_request(stack: Stack, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send bytes no well-behaved client would (a bad Content-Length, a body never sent) and read the reply."""
    with socket.create_connection(("127.0.0.1", stack.app.port), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    return int(status_line.split()[1]), headers, payload


def assert_error(r: requests.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["code"] == code, r.text
    message: str = error["message"]
    assert message
    return message


def assert_alive(stack: Stack) -> None:
    r = stack.app.call("GET", "health", key=None)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_the_host_refuses_bad_requests_as_azure_does(stack: Stack) -> None:
    stack.app.start()
    # A method no function takes, known or not, on a known route: 404 (Azure's answer), JSON, never 405 or HTML.
    for method in ("TRACE", "FOO", "DELETE", "PUT"):
        assert_error(stack.app.call(method, "jobs"), 404, "NotFound")
    assert_error(stack.app.call("POST", "health"), 404, "NotFound")
    assert_error(stack.app.call("GET", "nowhere"), 404, "NotFound")
    r = stack.app.call("HEAD", "jobs")
    assert r.status_code == 404 and r.content == b""
    # A missing key and a wrong key are told apart.
    assert "required" in assert_error(stack.app.call("GET", "jobs", key=None), 401, "MissingFunctionKey")
    assert_error(stack.app.call("GET", "jobs", key="wrong"), 401, "InvalidFunctionKey")
    # Framing the host must refuse before reading a body: the reply is JSON and the connection is closed.
    head = "POST /api/exports HTTP/1.1\nHost: x\nx-functions-key: " + FUNCTION_KEY + "\nContent-Length: "
    for length in ("-1", "abc", "1e3", "\u00b2"):
        status, headers, payload = raw_request(stack, head + length + "\n")
        assert (status, headers["connection"]) == (400, "close") and b"InvalidContentLength" in payload, length
    for length in (str(100 * 2**20 + 1), "9" * 5000):  # never read, never parsed past its size
        status, headers, payload = raw_request(stack, head + length + "\n")
        assert (status, headers["connection"]) == (413, "close") and b"BodyTooLarge" in payload
    status, _, payload = raw_request(stack, "GET /api/health HTTP/1.1\nHost: x\nConnection: close\n")
    assert status == 200
    # A chunked body reaches the function (it used to arrive empty).
    r = stack.app.call("POST", "exports", data=iter([b'{"hub"', b': "nohub"}']))
    assert "nohub" in assert_error(r, 404, "UnknownHub")
    assert_alive(stack)
