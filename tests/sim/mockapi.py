"""Loopback stand-ins for the Anthropic API and Docker's credential-injecting proxy.

`MockAPI` accepts a request when it carries the configured API key (`x-api-key`) or one of the
configured OAuth access tokens (`Authorization: Bearer ...`), answers `/v1/messages` with the
text "MOCK reply" (server-sent events when streaming), and records every request.

`Proxy` forwards everything to the mock. Given a host API key (Docker's proxy has one only when
the host has ANTHROPIC_API_KEY) it swaps the sandbox's `proxy-managed` placeholder for that key,
as Docker's host-side proxy does; without one it forwards the request unchanged.

Use in-process (`start_stack()`), or run `python tests/sim/mockapi.py` for the demo: it prints
`MOCK_API_URL=...` and `MOCK_PROXY_URL=...` and serves until interrupted. Stdlib only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Sentinel credentials shared by the fixtures, the demo and the mock's defaults. They are fake:
# the shapes match real ones so that Claude Code accepts them without complaint.
HOST_API_KEY = "sk-ant-api03-sbxtest-host-key-0000"
OAUTH_ACCESS_TOKEN = "sk-ant-oat01-sbxtest-access-0000"
OAUTH_REFRESH_TOKEN = "sk-ant-ort01-sbxtest-refresh-0000"
PLACEHOLDER = "proxy-managed"
REPLY_TEXT = "MOCK reply"

# Hop-by-hop headers a forwarding proxy must not copy (RFC 9110 7.6.1) plus the ones
# http.client computes itself.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
}


@dataclass
class RecordedRequest:
    """One request as the server saw it; header names are lowercased."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    @property
    def api_key(self) -> str | None:
        return self.headers.get("x-api-key")

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "authorization": self.authorization,
            "x-api-key": self.api_key,
        }


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _message_events(model: str, text: str) -> bytes:
    """The event sequence of a streamed one-block text reply, as the real API sends it."""
    usage = {"input_tokens": 1, "output_tokens": 1}
    message = {
        "id": "msg_mock0001",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    return b"".join(
        [
            _sse("message_start", {"type": "message_start", "message": message}),
            _sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            _sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": text},
                },
            ),
            _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 2},
                },
            ),
            _sse("message_stop", {"type": "message_stop"}),
        ]
    )


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    """Shared plumbing: read the request, record it, write a response."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the real API; we always send Content-Length
    server_version = "sbx-mock/1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean; requests are recorded instead

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _record(self) -> RecordedRequest:
        req = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self._read_body(),
        )
        self.server.owner._record(req)  # type: ignore[attr-defined]
        return req

    def _send(
        self,
        req: RecordedRequest,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        req.status = status
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("request-id", "req_mock")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.server.owner._log(req)  # type: ignore[attr-defined]

    def _send_json(self, req: RecordedRequest, status: int, obj: Any, **kw: Any) -> None:
        self._send(req, status, json.dumps(obj).encode(), **kw)

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _handle(self) -> None:
        raise NotImplementedError


class _ApiHandler(_Handler):
    def _handle(self) -> None:
        api: MockAPI = self.server.owner  # type: ignore[attr-defined]
        req = self._record()
        path = urllib.parse.urlsplit(req.path).path
        if not path.startswith("/v1/"):
            # Claude Code may probe /api/... endpoints; nothing there matters to the tests.
            self._send_json(req, 404, _error("not_found_error", f"Not found: {path}"))
            return
        if not api.authorized(req.headers):
            # x-should-retry: false makes Claude Code give up at once instead of retrying for
            # minutes, and print the same "API Error: 401 ..." line users reported.
            self._send_json(
                req,
                401,
                _error("authentication_error", "Invalid bearer token"),
                headers=[("x-should-retry", "false")],
            )
            return
        if req.method == "POST" and path == "/v1/messages":
            try:
                payload = req.json() or {}
            except ValueError:
                payload = {}
            model = str(payload.get("model") or "claude-mock")
            if payload.get("stream"):
                self._send(
                    req,
                    200,
                    _message_events(model, api.reply_text),
                    content_type="text/event-stream",
                )
            else:
                self._send_json(
                    req,
                    200,
                    {
                        "id": "msg_mock0001",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [{"type": "text", "text": api.reply_text}],
                        "stop_reason": "end_turn",
                        "stop_sequence": None,
                        "usage": {"input_tokens": 1, "output_tokens": 2},
                    },
                )
        elif path == "/v1/messages/count_tokens":
            self._send_json(req, 200, {"input_tokens": 1})
        elif path == "/v1/models":
            self._send_json(
                req, 200, {"data": [], "has_more": False, "first_id": None, "last_id": None}
            )
        else:
            self._send_json(req, 404, _error("not_found_error", f"Not found: {path}"))


class _ProxyHandler(_Handler):
    def _handle(self) -> None:
        proxy: Proxy = self.server.owner  # type: ignore[attr-defined]
        req = self._record()
        headers = {k: v for k, v in req.headers.items() if k not in _HOP_BY_HOP}
        key = proxy.host_api_key
        if key and PLACEHOLDER in (headers.get("x-api-key"), headers.get("authorization")):
            # Docker's proxy puts the real key on the request in place of the placeholder that
            # the seeded apiKeyHelper produced; a real OAuth bearer is left alone.
            if headers.get("authorization") == f"Bearer {PLACEHOLDER}":
                del headers["authorization"]
            headers["x-api-key"] = key
        up = urllib.parse.urlsplit(proxy.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        try:
            conn.request(req.method, req.path, body=req.body or None, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            extra = [
                (k, v)
                for k, v in resp.getheaders()
                if k.lower() not in _HOP_BY_HOP | {"content-type", "request-id"}
            ]
            self._send(
                req,
                resp.status,
                body,
                content_type=resp.getheader("content-type", "application/json"),
                headers=extra,
            )
        except OSError as exc:
            self._send_json(req, 502, _error("api_error", f"proxy: upstream failed: {exc}"))
        finally:
            conn.close()


class _Server:
    """A loopback ThreadingHTTPServer on a free port, served from a daemon thread."""

    handler: type[_Handler]

    def __init__(self, log_path: str | None = None) -> None:
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._log_path = log_path
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, port: int = 0) -> _Server:
        httpd = ThreadingHTTPServer(("127.0.0.1", port), self.handler)
        httpd.daemon_threads = True  # idle keep-alive connections must not block stop()
        httpd.owner = self  # type: ignore[attr-defined]
        self._httpd = httpd
        # A short poll interval keeps stop() (and so every test's teardown) fast.
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(0.05,), daemon=True, name=type(self).__name__
        )
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def _record(self, req: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(req)

    def _log(self, req: RecordedRequest) -> None:
        """Append the answered request to the log file (the demo shows it)."""
        if self._log_path:
            with self._lock, open(self._log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"server": type(self).__name__, **req.as_dict()}) + "\n")

    def messages(self) -> list[RecordedRequest]:
        """The POST /v1/messages requests (the ones that carry a prompt)."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == "POST" and urllib.parse.urlsplit(r.path).path == "/v1/messages"
            ]

    def __enter__(self) -> _Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MockAPI(_Server):
    """The mock Anthropic API. See the module docstring."""

    handler = _ApiHandler

    def __init__(
        self,
        api_key: str | None = HOST_API_KEY,
        oauth_tokens: Iterable[str] = (OAUTH_ACCESS_TOKEN,),
        reply_text: str = REPLY_TEXT,
        log_path: str | None = None,
    ) -> None:
        super().__init__(log_path)
        self.api_key = api_key
        self.oauth_tokens = set(oauth_tokens)
        self.reply_text = reply_text

    def authorized(self, headers: dict[str, str]) -> bool:
        if self.api_key and headers.get("x-api-key") == self.api_key:
            return True
        auth = headers.get("authorization", "")
        return auth.startswith("Bearer ") and auth[len("Bearer ") :] in self.oauth_tokens


class Proxy(_Server):
    """Docker's host-side API proxy, reduced to its credential handling."""

    handler = _ProxyHandler

    def __init__(
        self, upstream: str, host_api_key: str | None = None, log_path: str | None = None
    ) -> None:
        super().__init__(log_path)
        self.upstream = upstream
        self.host_api_key = host_api_key


@dataclass
class Stack:
    """A mock API and the proxy in front of it. Sandboxes talk to `url` (the proxy)."""

    api: MockAPI
    proxy: Proxy
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def api_url(self) -> str:
        return self.api.url

    @property
    def requests(self) -> list[RecordedRequest]:
        """What reached the mock API (after the proxy's rewriting)."""
        return self.api.requests

    def messages(self) -> list[RecordedRequest]:
        return self.api.messages()

    def clear(self) -> None:
        self.api.clear()
        self.proxy.clear()

    def stop(self) -> None:
        self.proxy.stop()
        self.api.stop()


def start_stack(
    api_key: str | None = HOST_API_KEY,
    oauth_tokens: Iterable[str] = (OAUTH_ACCESS_TOKEN,),
    host_api_key: str | None = None,
    log_path: str | None = None,
    api_port: int = 0,
    proxy_port: int = 0,
) -> Stack:
    """Start the mock API and a proxy in front of it on loopback; call `.stop()` when done."""
    api = MockAPI(api_key, oauth_tokens, log_path=log_path)
    api.start(api_port)
    proxy = Proxy(api.url, host_api_key, log_path=log_path)
    proxy.start(proxy_port)
    return Stack(api, proxy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--api-key", default=HOST_API_KEY, help="API key the mock accepts in x-api-key"
    )
    parser.add_argument(
        "--oauth-token",
        action="append",
        help=f"OAuth access token the mock accepts (default {OAUTH_ACCESS_TOKEN})",
    )
    parser.add_argument(
        "--host-key",
        default=None,
        help="key the proxy puts in place of the placeholder (default: none)",
    )
    parser.add_argument("--log", default=None, help="append each request as a JSON line here")
    parser.add_argument("--port", type=int, default=0, help="proxy port (default: any free)")
    args = parser.parse_args(argv)
    stack = start_stack(
        api_key=args.api_key,
        oauth_tokens=args.oauth_token or [OAUTH_ACCESS_TOKEN],
        host_api_key=args.host_key,
        log_path=args.log,
        proxy_port=args.port,
    )
    print(f"MOCK_API_URL={stack.api_url}")
    print(f"MOCK_PROXY_URL={stack.url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        time.sleep(0.1)
    stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
