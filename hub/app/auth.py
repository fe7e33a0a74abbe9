"""Sign-in on the embedded default: NativeAuthenticator (hashed passwords, sign-up with admin
approval), with its login handler made to run on JupyterHub 6.

NativeAuthenticator 1.3.0's LoginHandler.post times the login with `self.statsd`, which
JupyterHub 5 removed; every sign-in then fails with a 500. The subclass below gives the
handler a timer that does nothing; all else is NativeAuthenticator's own.
"""

from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler
from tornado import web

from atelier.spawner.core import audit


class _NullTimer:
    def start(self):
        return self

    def stop(self, send=True):
        return self


class _NullStatsd:
    def timer(self, name):
        return _NullTimer()


class SignInHandler(LoginHandler):
    statsd = _NullStatsd()


class AtelierAuthenticator(NativeAuthenticator):
    def get_handlers(self, app):
        return [
            (path, SignInHandler if path == r"/login" else handler)
            for path, handler in super().get_handlers(app)
        ]

    async def authenticate(self, handler, data):
        """Sign in, and record the attempt as an audit event (`login`)."""
        username = self.normalize_username(str(data.get("username", "")))
        result = await super().authenticate(handler, data)
        record_login(self, handler, username, result is not None)
        return result


def record_login(
    authenticator,
    handler,
    username: str,
    success: bool,
    reason: str = "wrong password, unknown user or not yet approved",
) -> None:
    event = audit.event(
        audit.Action.LOGIN,
        actor=username,
        source_ip=handler.request.remote_ip,
        resource=username,
        owner=username,
        result="success" if success else "failure",
        reason="" if success else reason,
    )
    authenticator.parent.atelier.store.record(**event)


def audit_oauth_login(authenticator, handler, authentication: dict) -> dict:
    """`post_auth_hook` for OAuthenticator: a successful sign-in is an audit event."""
    record_login(authenticator, handler, authentication["name"], True)
    return authentication


class AuditedOAuth:
    """Mixed into an OAuthenticator: a sign-in that comes back from the provider refused
    (an unconfirmed code, or a user outside `allowed_groups`) is an audit event too."""

    async def authenticate(self, handler, data=None):
        try:
            authenticated = await super().authenticate(handler, data)
        except web.HTTPError as error:
            record_login(self, handler, "unknown", False, f"the provider refused: {error}")
            raise
        if authenticated is None:
            record_login(self, handler, "unknown", False, "the provider did not confirm it")
        elif not self.allow_all and not await self.check_allowed(
            authenticated["name"], authenticated
        ):
            record_login(self, handler, authenticated["name"], False, "not in allowed_groups")
        return authenticated


def audited(authenticator_class: type) -> type:
    return type(authenticator_class.__name__, (AuditedOAuth, authenticator_class), {})
