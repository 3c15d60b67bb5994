"""The HTTP plumbing both RunPod doubles share: a threaded loopback server that hands every request to its double."""

from __future__ import annotations

import json
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol


class Double(Protocol):
    def handle(self, handler: Handler, method: str) -> None: ...


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive connections must not hold up shutdown
    double: Double


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as separate writes; without this, Nagle plus
        # delayed ACKs add ~40 ms to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self.server.double.handle(self, "GET")

    def do_POST(self) -> None:
        self.server.double.handle(self, "POST")

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a test double has no business writing to the test's stderr."""


def send_json(handler: Handler, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(payload).encode("utf-8")
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)
