"""Hostile deliveries: every malformed request is a 4xx — never a 5xx — and changes nothing
(stored deliveries, every item and every subject compared before and after)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.support import db_state, event, now_ms
from tests.support.stack import (
    HttpAnswer,
    Stack,
    new_signing_secret,
    post,
    running_stack,
    signed_headers,
    stale,
)

pytestmark = pytest.mark.e2e

Headers = list[tuple[str, str]]


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(database_url, tmp_path_factory.mktemp("hostile")) as s:
        yield s


@dataclass
class Delivery:
    body: bytes
    headers: Headers
    method: str = "POST"


def valid(stack: Stack) -> tuple[bytes, dict[str, str]]:
    subject = f"user_hostile_{secrets.token_hex(4)}"
    body = json.dumps(event("item_active_pro_month", at_ms=now_ms(), subject=subject)).encode()
    return body, signed_headers(body, stack.signing_secret)


def raw_sign(secret: str, msg_id: str, ts: str, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def without(h: dict[str, str], name: str) -> Headers:
    return [(k, v) for k, v in h.items() if k != name]


def replaced(h: dict[str, str], name: str, value: str) -> Headers:
    return [(k, value if k == name else v) for k, v in h.items()]


def doubled(h: dict[str, str], name: str) -> Headers:
    return [*h.items(), (name, h[name])]


def signed_body(stack: Stack, body: bytes) -> Delivery:
    msg_id, ts = "msg_" + secrets.token_hex(8), str(int(time.time()))
    sig = raw_sign(stack.signing_secret, msg_id, ts, body)
    return Delivery(body, [("svix-id", msg_id), ("svix-timestamp", ts), ("svix-signature", sig)])


def chunked(body: bytes) -> bytes:
    step = 64 * 1024
    parts = [
        b"%x\r\n%s\r\n" % (len(body[i : i + step]), body[i : i + step])
        for i in range(0, len(body), step)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


def _cases() -> dict[str, Callable[[Stack], Delivery]]:
    def case(fn: Callable[[bytes, dict[str, str], Stack], Delivery]) -> Callable[[Stack], Delivery]:
        def build(stack: Stack) -> Delivery:
            body, h = valid(stack)
            return fn(body, h, stack)

        return build

    big = b'{"type":"user.created","data":{"id":"user_big","pad":"' + b"x" * (1024 * 1024) + b'"}}'
    return {
        "no_headers": case(lambda b, h, s: Delivery(b, [])),
        "missing_id": case(lambda b, h, s: Delivery(b, without(h, "svix-id"))),
        "missing_timestamp": case(lambda b, h, s: Delivery(b, without(h, "svix-timestamp"))),
        "missing_signature": case(lambda b, h, s: Delivery(b, without(h, "svix-signature"))),
        "empty_id": case(lambda b, h, s: Delivery(b, replaced(h, "svix-id", ""))),
        "empty_signature": case(lambda b, h, s: Delivery(b, replaced(h, "svix-signature", ""))),
        "duplicate_id": case(lambda b, h, s: Delivery(b, doubled(h, "svix-id"))),
        "duplicate_timestamp": case(lambda b, h, s: Delivery(b, doubled(h, "svix-timestamp"))),
        "duplicate_signature": case(lambda b, h, s: Delivery(b, doubled(h, "svix-signature"))),
        "signature_without_comma": case(
            lambda b, h, s: Delivery(b, replaced(h, "svix-signature", "v1abcdef"))
        ),
        "signature_bad_base64": case(
            lambda b, h, s: Delivery(b, replaced(h, "svix-signature", "v1,!!!not*base64%%%"))
        ),
        "signature_unknown_version": case(
            lambda b, h, s: Delivery(
                b, replaced(h, "svix-signature", h["svix-signature"].replace("v1,", "v2,"))
            )
        ),
        "signature_garbage_list": case(
            lambda b, h, s: Delivery(b, replaced(h, "svix-signature", "a b , ,, v1, ,v1"))
        ),
        "signature_many_bogus": case(
            lambda b, h, s: Delivery(b, replaced(h, "svix-signature", " ".join(["v1,AAAA"] * 300)))
        ),
        "timestamp_not_numeric": case(
            lambda b, h, s: Delivery(b, replaced(h, "svix-timestamp", "abc"))
        ),
        "timestamp_float": case(
            lambda b, h, s: Delivery(b, replaced(h, "svix-timestamp", h["svix-timestamp"] + ".5"))
        ),
        "timestamp_negative": case(
            lambda b, h, s: Delivery(b, replaced(h, "svix-timestamp", "-5"))
        ),
        "timestamp_nan": case(lambda b, h, s: Delivery(b, replaced(h, "svix-timestamp", "nan"))),
        "timestamp_huge": case(
            lambda b, h, s: Delivery(b, replaced(h, "svix-timestamp", "9" * 40))
        ),
        "timestamp_zero": case(lambda b, h, s: Delivery(b, replaced(h, "svix-timestamp", "0"))),
        "timestamp_far_future_signed": case(
            lambda b, h, s: Delivery(
                b, list(signed_headers(b, s.signing_secret, when=stale(-60)).items())
            )
        ),
        "replayed_after_6_minutes": case(
            lambda b, h, s: Delivery(
                b, list(signed_headers(b, s.signing_secret, when=stale(6)).items())
            )
        ),
        "tampered_body": case(
            lambda b, h, s: Delivery(b.replace(b"active", b"actiVe", 1), list(h.items()))
        ),
        "body_with_trailing_space": case(lambda b, h, s: Delivery(b + b" ", list(h.items()))),
        "wrong_secret": case(
            lambda b, h, s: Delivery(b, list(signed_headers(b, new_signing_secret()).items()))
        ),
        "id_swapped_after_signing": case(
            lambda b, h, s: Delivery(b, replaced(h, "svix-id", "msg_other"))
        ),
        "id_with_space": case(lambda b, h, s: Delivery(b, replaced(h, "svix-id", "msg 1"))),
        "id_too_long": case(lambda b, h, s: Delivery(b, replaced(h, "svix-id", "m" * 300))),
        "id_non_ascii": case(lambda b, h, s: Delivery(b, replaced(h, "svix-id", "msg_\u00e9"))),
        "huge_header": case(lambda b, h, s: Delivery(b, [*h.items(), ("x-padding", "p" * 20000)])),
        "signature_header_too_long": case(
            lambda b, h, s: Delivery(b, replaced(h, "svix-signature", "v1," + "A" * 5000))
        ),
        "non_utf8_body_signed": lambda s: signed_body(
            s, b'{"type":"user.created","data":{"id":"\xff\xfe"}}'
        ),
        "oversized_body": lambda s: signed_body(s, big),
        "oversized_chunked_body": lambda s: Delivery(
            chunked(big), [*signed_body(s, big).headers, ("Transfer-Encoding", "chunked")]
        ),
        "get_method": case(lambda b, h, s: Delivery(b"", list(h.items()), method="GET")),
        "put_method": case(lambda b, h, s: Delivery(b, list(h.items()), method="PUT")),
        "delete_method": case(lambda b, h, s: Delivery(b"", list(h.items()), method="DELETE")),
    }


CASES = _cases()


def send(stack: Stack, d: Delivery) -> HttpAnswer:
    return post(stack.gateway_port, d.body, d.headers, method=d.method)


def test_there_are_at_least_30_distinct_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_delivery_is_4xx_and_changes_nothing(stack: Stack, name: str) -> None:
    delivery = CASES[name](stack)
    before = db_state(stack.database_url)
    answer = send(stack, delivery)
    assert 400 <= answer.status < 500, (name, answer.status, answer.body[:200])
    if name.startswith("oversized"):
        assert answer.status == 413
    if name.endswith("_method"):
        assert answer.status == 405
    assert db_state(stack.database_url) == before
    assert b"Traceback" not in answer.body


def test_the_valid_delivery_the_cases_derive_from_is_accepted(stack: Stack) -> None:
    """Guards the table: the untouched delivery must pass, so each case fails for its own flaw."""
    body, headers = valid(stack)
    before = db_state(stack.database_url)
    answer = post(stack.gateway_port, body, headers)
    assert answer.status == 200 and answer.json() == {"outcome": "APPLIED"}
    assert db_state(stack.database_url)[0] == before[0] + 1


def test_slow_loris_body_times_out(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A client trickling its body is cut off (408) instead of holding a connection forever."""
    import socket

    with running_stack(
        database_url, tmp_path_factory.mktemp("slow"), GATEWAY_BODY_TIMEOUT_SECONDS="1"
    ) as s:
        before = db_state(s.database_url)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", s.gateway_port), timeout=10) as sock:
            sock.sendall(
                b"POST /api/webhooks/clerk-billing HTTP/1.1\r\nHost: x\r\n"
                b"svix-id: msg_slow\r\nsvix-timestamp: 1\r\nsvix-signature: v1,AAAA\r\n"
                b"Content-Length: 1000\r\n\r\n{"
            )
            received = b""
            for _ in range(40):
                try:
                    sock.sendall(b" ")
                except OSError:
                    break
                sock.settimeout(0.25)
                try:
                    chunk = sock.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                received += chunk
                if b"\r\n\r\n" in received:
                    break
        assert received.startswith(b"HTTP/1.1 408"), received[:100]
        assert time.monotonic() - started < 8
        assert db_state(s.database_url) == before


def test_slow_loris_headers_are_cut_off(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A client trickling its request headers is disconnected after the idle timeout."""
    import socket

    with running_stack(
        database_url, tmp_path_factory.mktemp("slowh"), GATEWAY_IDLE_TIMEOUT_SECONDS="1"
    ) as s:
        started = time.monotonic()
        closed = False
        with socket.create_connection(("127.0.0.1", s.gateway_port), timeout=10) as sock:
            sock.sendall(b"POST /api/webhooks/clerk-billing HTTP/1.1\r\nHost: x\r\n")
            sock.settimeout(0.2)
            for _ in range(50):  # up to 10 s of one header byte every 0.2 s
                try:
                    sock.sendall(b"X")
                    if sock.recv(4096) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
                except OSError:
                    closed = True
                    break
        assert closed and time.monotonic() - started < 5
