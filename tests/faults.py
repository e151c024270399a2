"""A fault-injecting HTTP reverse proxy to put in front of the embedded S3 server.

Clients reach it exactly as they reach MinIO: through `AWS_ENDPOINT_URL`. It forwards every
request (method, path, query, headers, body) to the upstream server over real HTTP and relays
the response, unless a rule says otherwise:

    proxy.fail("GET", "/bucket/photos/", status=503, times=2)   # the next 2 such GETs: SlowDown
    proxy.delay("PUT", "/bucket/", seconds=1.5)                 # every such PUT answered late
    proxy.deny("HEAD", "/bucket/")                              # 403 AccessDenied
    proxy.drop("GET", "/bucket/x", times=1)                     # close the connection unanswered

Every request it saw is recorded as (method, path, status) so tests can count attempts. It
speaks HTTP/1.1 with keep-alive, decodes chunked request bodies (the AWS C++ SDK and urllib3
may send them; `aws-chunked` framing inside a body is passed through untouched) and always
answers with a Content-Length. Nothing in the clients is patched.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import sys
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import urlsplit

ANY = object()  # any status, in FaultProxy.count

# What S3 answers for each injected status: (code, message), as in its XML error bodies.
S3_ERRORS = {
    400: ("BadRequest", "An error occurred when parsing the HTTP request."),
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchBucket", "The specified bucket does not exist"),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}

# Hop-by-hop headers: they describe one connection, never forwarded (RFC 9110 section 7.6.1).
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
}


@dataclass
class Seen:
    """One request the proxy received, recorded as it arrives: status is None until it is
    answered, and stays None when the connection is dropped instead."""

    method: str
    path: str  # path and query, as sent
    status: int | None = None


@dataclass
class Rule:
    """A fault for requests whose method matches (None: any) and whose path contains `path`."""

    method: str | None
    path: str
    action: str  # "status", "delay" or "drop"
    status: int = 503
    code: str | None = None  # the S3 error code in the body (default: S3's for the status)
    seconds: float = 0.0
    times: int | None = None  # how many more matching requests it applies to; None: all
    forward_first: bool = False  # for "drop": let the upstream act on the request, lose the answer
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and self.path in path and self.times != 0


def s3_error_body(status: int, resource: str, code: str | None = None, message: str | None = None) -> bytes:
    default_code, default_message = S3_ERRORS.get(status, ("InternalError", "Injected fault"))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code or default_code}</Code><Message>{message or default_message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    ).encode()


class FaultProxy:
    """A threaded reverse proxy on 127.0.0.1 (a free port) in front of `upstream` (http://HOST:PORT)."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{upstream}: the upstream must be http://HOST:PORT")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._seen: list[Seen] = []
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ rules

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def fail(
        self, method: str | None, path: str = "", status: int = 503, times: int | None = 1, code: str | None = None
    ) -> Rule:
        """Answer the next `times` matching requests (None: all) with `status` and S3's XML error body."""
        return self.add(Rule(method, path, "status", status=status, code=code, times=times))

    def deny(self, method: str | None, path: str = "", times: int | None = None) -> Rule:
        """403 AccessDenied, as for a key the credentials may not touch."""
        return self.fail(method, path, status=403, times=times)

    def delay(self, method: str | None, path: str = "", seconds: float = 1.0, times: int | None = None) -> Rule:
        """Forward matching requests, but only after `seconds`."""
        return self.add(Rule(method, path, "delay", seconds=seconds, times=times))

    def drop(self, method: str | None, path: str = "", times: int | None = 1, forward_first: bool = False) -> Rule:
        """Close the connection without an answer (after forwarding the request if `forward_first`)."""
        return self.add(Rule(method, path, "drop", times=times, forward_first=forward_first))

    def clear(self) -> None:
        """No more faults, and forget the requests seen so far."""
        with self._lock:
            self._rules.clear()
            self._seen.clear()

    def _take_rule(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.hits += 1
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None

    # ------------------------------------------------------------------ what was seen

    def _arrived(self, method: str, path: str) -> Seen:
        entry = Seen(method, path)
        with self._lock:
            self._seen.append(entry)
        return entry

    def _answered(self, entry: Seen, status: int) -> None:
        with self._lock:
            entry.status = status

    def seen(self, method: str | None = None, path: str = "") -> list[Seen]:
        """The requests received so far (method None: any; `path` a substring of path + query)."""
        with self._lock:
            return [
                Seen(s.method, s.path, s.status)
                for s in self._seen
                if (method is None or s.method == method) and path in s.path
            ]

    def count(self, method: str | None = None, path: str = "", status: object = ANY) -> int:
        """How many requests matched; `status` an int, None (dropped) or ANY."""
        return sum(1 for s in self.seen(method, path) if status is ANY or s.status == status)

    # ------------------------------------------------------------------ forwarding

    def forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, str, list, bytes]:
        """Send one request upstream on a fresh connection; (status, reason, headers, body) back."""
        connection = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                connection.putheader(name, value)
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body if body else None)
            response = connection.getresponse()
            data = response.read()  # http.client undoes chunked encoding; HEAD reads nothing
            return response.status, response.reason, response.getheaders(), data
        finally:
            connection.close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that gave up (its timeout during an injected delay) closes the socket under
        # us: expected here, not worth a traceback on stderr. Anything else is reported.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_for(proxy: FaultProxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(_ProxyHandler):
        pass

    Handler.proxy = proxy
    return Handler


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; parse_request answers "Expect: 100-continue"
    proxy: FaultProxy
    timeout = 120  # idle keep-alive connections are closed eventually

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)  # the CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        method, path = self.command, self.path
        body = self._read_body()
        entry = self.proxy._arrived(method, path)
        rule = self.proxy._take_rule(method, path)
        if rule is not None and rule.action == "delay":
            time.sleep(rule.seconds)
        if rule is not None and rule.action == "status":
            self._send_error(entry, rule.status, code=rule.code)
            return
        if rule is not None and rule.action == "drop":
            if rule.forward_first:
                self._forward(entry, body, relay=False)
            self._drop()
            return
        self._forward(entry, body)

    def _forward(self, entry: Seen, body: bytes, relay: bool = True) -> None:
        method, path = entry.method, entry.path
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"content-length"}]
        try:
            status, reason, upstream_headers, data = self.proxy.forward(method, path, headers, body)
        except OSError:
            if relay:
                self._send_error(entry, 502, code="BadGateway", message="the upstream did not answer")
            return
        if not relay:
            return
        self.proxy._answered(entry, status)
        self.send_response_only(status, reason)
        for name, value in upstream_headers:
            if name.lower() not in _HOP_BY_HOP and (method == "HEAD" or name.lower() != "content-length"):
                self.send_header(name, value)
        if method != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD" and data:
            self.wfile.write(data)
        self.wfile.flush()

    def _send_error(self, entry: Seen, status: int, code: str | None = None, message: str | None = None) -> None:
        body = s3_error_body(status, entry.path.split("?", 1)[0], code, message)
        self.proxy._answered(entry, status)
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", uuid.uuid4().hex[:16].upper())
        self.send_header("Date", self.date_time_string())
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _drop(self) -> None:
        self.close_connection = True
        with suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _handle
