"""A tracking server that is up but broken: `/health` answers 200, every API call 500.

For the bounded-cost tests of tracking/store.py: it counts the requests it receives, so a test
can check that a failed store is not called again.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        server: BrokenTrackingServer = self.server  # type: ignore[assignment]
        if self.path.rstrip("/") == "/health":
            body, status = b"OK", 200
        else:
            server.api_requests.append(f"{self.command} {self.path}")
            body, status = b"internal error: database unavailable", 500
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, *args: object) -> None:  # quiet
        pass


class BrokenTrackingServer(ThreadingHTTPServer):
    """Serves on 127.0.0.1 in a thread; `api_requests` lists every non-health request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.api_requests: list[str] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> BrokenTrackingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
