"""A test double of an OpenAI-compatible chat-completions endpoint.

`ScriptedOpenAI` is a real HTTP server (stdlib `http.server`) that listens
on loopback only (127.0.0.1, a free port) and speaks enough of the OpenAI
protocol for a client to talk to it over the wire:

- `POST /v1/chat/completions` answers with a `chat.completion` object, or
  with whatever the test scripted: an HTTP error, a delay, no answer at
  all, a raw (malformed) body, extra headers;
- `GET /v1/models` answers with a model list.

Replies come from a queue that the test fills with `push(...)`, one per
request in order; when the queue is empty the `responder` decides. Every
request is recorded in `requests` with its parsed body and its headers.

    with ScriptedOpenAI() as server:
        server.push(Reply(status=429, headers={"Retry-After": "0"}), Reply(text="hi"))
        ...  # point a client at server.url
        assert len(server.requests) == 2
"""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    """What the server answers to one request."""

    text: str = ""  # the assistant's content (or the error message when status is not 200)
    status: int = 200  # HTTP status; non-200 sends {"error": {"message": ..., "type": ...}}
    delay_s: float = 0.0  # sleep before answering
    never: bool = False  # never answer (hold the connection until the server stops)
    body: bytes | None = None  # raw body sent as-is instead of the protocol JSON (malformed replies)
    headers: dict = field(default_factory=dict)  # extra response headers, e.g. {"Retry-After": "0"}


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status in (401, 403):
        return "authentication_error"
    if status == 404:
        return "not_found_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _text_of(content) -> str:
    """The text of a message's content: a string, or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler stuck on a socket never keeps the process alive
    allow_reuse_address = True

    def __init__(self, owner: "ScriptedOpenAI"):
        self.owner = owner
        self.stopped = threading.Event()  # `never` and `delay_s` wait on it
        self.connections: set = set()  # open sockets, shut down on close
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request, client_address):
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        # A client that hangs up (a time-out, a refused large reply) is expected here.
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) or self.stopped.is_set():
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints do
    server_version = "ScriptedOpenAI/1"
    timeout = 60  # an idle keep-alive connection is dropped after this many seconds
    server: _Server

    def log_message(self, format, *args):  # quiet: no access log on stderr
        pass

    # -- protocol -------------------------------------------------------------

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            owner = self.server.owner
            data = [{"id": m, "object": "model", "created": owner.created, "owned_by": "scripted"}
                    for m in owner.models()]
            self._send(200, json.dumps({"object": "list", "data": data}).encode())
        else:
            self._send_error(404, f"no route for GET {self.path}")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        owner = self.server.owner
        owner._record({"body": body, "headers": headers})
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send_error(404, f"no route for POST {self.path}")
            return
        if not isinstance(body, dict):
            self._send_error(400, "the request body is not a JSON object")
            return
        try:
            reply = owner._next(body)
        except Exception as e:  # a broken responder shows up as a server error, not a hang
            reply = Reply(status=500, text=f"responder failed: {type(e).__name__}: {e}")
        self._answer(body, reply)

    def _answer(self, body: dict, reply: Reply):
        stopped = self.server.stopped
        if reply.never:
            stopped.wait()
            self.close_connection = True
            return
        if reply.delay_s > 0 and stopped.wait(reply.delay_s):
            self.close_connection = True
            return
        if reply.body is not None:
            self._send(reply.status, reply.body, reply.headers)
        elif reply.status != 200:
            message = reply.text or f"scripted HTTP {reply.status}"
            self._send_error(reply.status, message, reply.headers)
        else:
            self._send(200, json.dumps(self.server.owner._completion(body, reply.text)).encode(),
                       reply.headers)

    # -- writing --------------------------------------------------------------

    def _send_error(self, status: int, message: str, headers: dict | None = None):
        payload = {"error": {"message": message, "type": _error_type(status), "param": None,
                             "code": None}}
        self._send(status, json.dumps(payload).encode(), headers)

    def _send(self, status: int, payload: bytes, headers: dict | None = None):
        out = {"Content-Type": "application/json"}
        for k, v in (headers or {}).items():  # a scripted header replaces a default of that name
            for d in [d for d in out if d.lower() == str(k).lower()]:
                del out[d]
            out[str(k)] = str(v)
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        self.send_response(status, phrase)
        for k, v in out.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()


class ScriptedOpenAI:
    """Context manager. `with ScriptedOpenAI(responder) as server:`

    `responder(body: dict) -> Reply` answers when the queue is empty (by
    default an empty reply). `url` is the base URL a client takes
    ("http://127.0.0.1:<port>/v1"); `requests` lists every request received,
    in order, as {"body": parsed JSON, "headers": {lowercased name: value}}.
    """

    def __init__(self, responder=None):
        self.responder = responder or (lambda body: Reply(text=""))  # a test may swap it
        self._queue: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._counter = 0
        self.created = int(time.time())
        self.requests: list = []
        self._server = _Server(self)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"scripted-openai-{port}", daemon=True)
        self._thread.start()
        self._closed = False

    def __enter__(self) -> "ScriptedOpenAI":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def push(self, *replies: Reply) -> None:
        """Queues replies, consumed one per request in order."""
        with self._lock:
            self._queue.extend(replies)

    def close(self) -> None:
        """Stops the server; releases the handlers held by `never` or `delay_s`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._server.stopped.set()
        self._server.shutdown()
        with self._server.connections_lock:
            open_sockets = list(self._server.connections)
        for s in open_sockets:  # wakes handlers blocked reading a kept-alive connection
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- used by the handler ----------------------------------------------------

    def models(self) -> list[str]:
        with self._lock:
            seen = [r["body"].get("model") for r in self.requests if isinstance(r["body"], dict)]
        names = [m for m in dict.fromkeys(seen) if isinstance(m, str) and m]
        return names or ["scripted"]

    def _record(self, request: dict) -> None:
        with self._lock:
            self.requests.append(request)

    def _next(self, body: dict) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return self.responder(body)

    def _completion(self, body: dict, text: str) -> dict:
        with self._lock:
            self._counter += 1
            n = self._counter
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        prompt = "\n".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))
        prompt_tokens, completion_tokens = _tokens(prompt), _tokens(text)
        return {
            "id": f"chatcmpl-scripted-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or "scripted",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
