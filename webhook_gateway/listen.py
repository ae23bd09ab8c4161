"""The listening socket, made here so its receive buffer is small (inherited by every
accepted connection).

Python's event loop reads up to 256 KiB per socket read, and aiohttp parses a request's
headers and hands its first body bytes to the request's reader before the handler runs and
can turn the request away: 300 connections arriving at once held 300 reads' worth. A receive
buffer of RECEIVE_BUFFER_BYTES bounds each read (and the TCP window a sender gets) to about
that, so what a connection holds before the body budget is consulted is small.
"""

from __future__ import annotations

import socket

RECEIVE_BUFFER_BYTES = 32 * 1024  # Linux doubles it for its bookkeeping


def listening_socket(host: str, port: int, backlog: int = 128) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Before listen(): the window scale of accepted connections is chosen from it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
