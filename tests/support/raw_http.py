"""HTTP/1.1 spoken by hand, for the tests that send what no well-behaved client sends: bodies
trickled or far too large, headers never finished."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from dataclasses import dataclass
from typing import Any


def request_head(
    port: int, path: str, headers: dict[str, str], *, content_length: int | None = None
) -> bytes:
    """The request line and headers of a POST; without `content_length`, a chunked body."""
    lines = [f"POST {path} HTTP/1.1", f"host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if content_length is None:
        lines.append("transfer-encoding: chunked")
    else:
        lines.append(f"content-length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Sent:
    """What one flooding connection managed to send before the server stopped it."""

    sent: int = 0
    cut: bool = False


async def slow_body(
    port: int,
    path: str,
    headers: dict[str, str],
    *,
    total: int,
    chunk: int,
    interval: float,
    declare: bool,
) -> Sent:
    """Send a `total`-byte body in `chunk`s every `interval` seconds (declared with
    Content-Length or chunked), until it is sent or the server cuts the connection."""
    result = Sent()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        result.cut = True
        return result
    answer = asyncio.create_task(reader.read(65536))  # done: the server answered or closed
    try:
        writer.write(request_head(port, path, headers, content_length=total if declare else None))
        payload = b"x" * chunk
        while result.sent < total and not answer.done():
            data = payload if declare else b"%x\r\n%s\r\n" % (len(payload), payload)
            writer.write(data)
            await writer.drain()
            result.sent += chunk
            await asyncio.wait([answer], timeout=interval)
        result.cut = answer.done()
    except (ConnectionError, OSError):
        result.cut = True
    finally:
        answer.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
            await writer.wait_closed()
            await answer
    return result


def read_response(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body (de-chunked) of one response, or status 0 if the server
    closed the connection without one; TimeoutError if nothing ends it within `timeout`."""
    sock.settimeout(timeout)
    data = b""
    while not _complete(data):
        try:
            part = sock.recv(65536)
        except ConnectionResetError:
            part = b""
        if not part:
            break
        data += part
    if not data:
        return 0, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunked(body)
    return int(status_line.split()[1]), headers, body


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        return body.endswith(b"0\r\n\r\n")
    if b"content-length:" in lower:
        return len(body) >= int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
    return False


def _dechunked(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


def post(
    port: int, path: str, body: bytes, headers: dict[str, str], timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """One complete POST on a fresh connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request_head(port, path, headers, content_length=len(body)) + body)
        return read_response(sock, timeout)


def json_body(body: bytes) -> Any:
    return json.loads(body)
