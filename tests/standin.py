"""A small stand-in of the Atelier API on loopback, for the unit tests of its clients (the SDK,
the CLI, the instance's extension): it answers what a test told it to and records what came."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

API = "/services/atelier/api/v1"


def refusal(code: str, message: str, field: str | None = None) -> dict:
    return {"error": {"code": code, "message": message, "field": field}}


@dataclass
class Seen:
    method: str
    path: str  # as sent, without its query
    query: dict
    authorization: str
    body: object


@dataclass
class FakeAtelier:
    """Answers (method, path) from `answers`: a list of (status, body) taken in turn, the last
    one repeated; a str body goes out as text. Paths are given after `prefix`. Records every
    request in `seen`."""

    prefix: str = ""
    url: str = ""
    answers: dict = field(default_factory=dict)
    seen: list = field(default_factory=list)

    def answer(self, method: str, path: str, *replies) -> None:
        self.answers[(method, self.prefix + path)] = list(replies)

    def reply(self, method: str, path: str) -> tuple[int, object]:
        replies = self.answers.get((method, path))
        if not replies:
            return 404, refusal("not_found", f"no route {method} {path}")
        return replies.pop(0) if len(replies) > 1 else replies[0]


def serve(fake: FakeAtelier):
    """Serve `fake` on a free loopback port (its `url` is the API's); the server, to shut."""

    class Handler(BaseHTTPRequestHandler):
        def answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            body = json.loads(raw) if raw else None
            fake.seen.append(
                Seen(self.command, url.path, query, self.headers["Authorization"], body)
            )
            status, data = fake.reply(self.command, url.path)
            text = isinstance(data, str)
            payload = data.encode() if text else json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if text else "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PATCH = do_DELETE = answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_port}{API}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
