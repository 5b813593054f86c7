"""A small HTTP proxy in front of the moto server that injects S3 faults: throttling errors and stalled uploads.

Only the standard library: a threaded `http.server` that forwards each request with `http.client`. botocore
talks plain HTTP to 127.0.0.1 with a Content-Length on every body, so the proxy reads whole requests and
relays whole responses.
"""

from __future__ import annotations

import http.client
import http.server
import threading
from urllib.parse import urlparse

SLOW_DOWN_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    b"<RequestId>s3-fault-proxy</RequestId></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "upgrade"}


def is_upload_part(method: str, path: str) -> bool:
    return method == "PUT" and "partNumber=" in path and "uploadId=" in path


class S3FaultProxy:
    """Forwards S3 requests sent to `url` on to `upstream`.

    - `fail_first`: the first N requests are answered `503 SlowDown` (what S3 sends when throttling);
    - `forward_parts`: when set, only the first N UploadPart requests reach `upstream`; later ones are held
      without an answer (an upload stalled mid-way) until `close()`, which drops their connections.
    `seen` lists every request as (method, path) in arrival order; `parts_forwarded` is set once
    `forward_parts` parts were stored upstream.
    """

    def __init__(self, upstream: str, fail_first: int = 0, forward_parts: int | None = None):
        self.upstream = urlparse(upstream).netloc
        self.fail_first = fail_first
        self.forward_parts = forward_parts
        self.seen: list[tuple[str, str]] = []
        self.parts_forwarded = threading.Event()
        self._parts_started = 0
        self._parts_done = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> S3FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _decide(self, method: str, path: str) -> str:
        """'fail', 'stall' or 'forward' for the next request."""
        with self._lock:
            self.seen.append((method, path))
            if len(self.seen) <= self.fail_first:
                return "fail"
            if self.forward_parts is not None and is_upload_part(method, path):
                if self._parts_started >= self.forward_parts:
                    return "stall"
                self._parts_started += 1
            return "forward"

    def _part_stored(self) -> None:
        with self._lock:
            self._parts_done += 1
            if self._parts_done >= (self.forward_parts or 0):
                self.parts_forwarded.set()

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and "100 Continue" for botocore's Expect header

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                action = proxy._decide(self.command, self.path)
                if action == "stall":
                    proxy._release.wait()
                    self.close_connection = True
                    return
                if action == "fail":
                    self._answer(503, [("Content-Type", "application/xml")], SLOW_DOWN_XML)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                finally:
                    upstream.close()
                self._answer(response.status, response.getheaders(), payload)
                if is_upload_part(self.command, self.path) and response.status == 200:
                    proxy._part_stored()

            def _answer(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
                self.send_response(status)  # adds its own Server and Date
                length = str(len(payload))
                for key, value in headers:
                    if key.lower() == "content-length":
                        length = value if self.command == "HEAD" else length
                    elif key.lower() not in _HOP_BY_HOP | {"server", "date"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        return Handler
