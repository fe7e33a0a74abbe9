"""A small OpenID Connect provider on loopback, for the sign-in tests.

It signs in one configured person without asking (authorization code flow): /authorize
redirects back with a code, /token trades it for an access token, /userinfo returns the
claims, /.well-known/openid-configuration describes it.
"""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse


class Provider:
    def __init__(self, claims: dict, client_id: str = "atelier", client_secret: str = "s3cret"):
        self.claims, self.client_id, self.client_secret = claims, client_id, client_secret
        self.codes: dict[str, str] = {}
        self.tokens: set[str] = set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def settings(self) -> dict:
        """The `auth` block of atelier.yaml for this provider."""
        return {
            "kind": "oidc",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "authorize_url": f"{self.url}/authorize",
            "token_url": f"{self.url}/token",
            "userdata_url": f"{self.url}/userinfo",
        }

    def stop(self) -> None:
        self.server.shutdown()

    def _handler(self):
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status: int, body: dict | None = None, headers: dict | None = None):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                data = json.dumps(body).encode() if body is not None else b""
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/authorize":
                    if query.get("client_id") != provider.client_id:
                        return self.reply(400, {"error": "unauthorized_client"})
                    code = secrets.token_hex(8)
                    provider.codes[code] = query["redirect_uri"]
                    back = urlencode({"code": code, "state": query["state"]})
                    return self.reply(302, None, {"Location": f"{query['redirect_uri']}?{back}"})
                if url.path == "/userinfo":
                    token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    if token not in provider.tokens:
                        return self.reply(401, {"error": "invalid_token"})
                    return self.reply(200, provider.claims)
                if url.path == "/.well-known/openid-configuration":
                    return self.reply(
                        200,
                        {
                            "issuer": provider.url,
                            "authorization_endpoint": f"{provider.url}/authorize",
                            "token_endpoint": f"{provider.url}/token",
                            "userinfo_endpoint": f"{provider.url}/userinfo",
                        },
                    )
                return self.reply(404, {"error": "not_found"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if urlparse(self.path).path != "/token" or form.get("code") not in provider.codes:
                    return self.reply(400, {"error": "invalid_grant"})
                provider.codes.pop(form["code"])
                token = secrets.token_hex(16)
                provider.tokens.add(token)
                return self.reply(
                    200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
                )

        return Handler
