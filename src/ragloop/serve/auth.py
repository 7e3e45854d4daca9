"""API keys at the HTTP door: when a key is required, who is calling, and what they may see.

Keys themselves live in the store (``ragloop.store.keys``, secrets kept only as hashes). This module turns
an ``Authorization`` header into a ``Caller`` and applies the three rules every endpoint shares: admin-only
endpoints, a key's collection scope (a request may narrow it, never widen it), and reading only one's own
records.

A browser page (the chat, ``serve.chat``) signs in once and keeps its key in an HttpOnly, SameSite=Strict
cookie; a request carrying that cookie instead of an ``Authorization`` header is a *session* request and
must also carry ``X-Requested-With`` (``request_caller``): a custom header cannot be sent by another site
without a CORS preflight, which this server never grants, so a forged cross-site request is refused even
where a browser would send the cookie.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ragloop.config import ServerSettings
from ragloop.errors import AuthError, ConfigError, PermissionDenied
from ragloop.store.keys import verify_key


@dataclass(frozen=True)
class Caller:
    """Who sent a request. ``key_id`` is None when auth is off; ``collections`` None means every one.
    ``name`` is the key's name; ``session`` is True for a browser session (the key came in the chat's
    cookie), whose user id is the key's name whatever the request body says."""

    key_id: str | None
    admin: bool
    collections: list[str] | None
    name: str | None = None
    session: bool = False


# With auth off the server trusts whoever can reach it, which auto mode allows only on loopback.
OPEN = Caller(key_id=None, admin=True, collections=None)

SESSION_COOKIE = "ragloop_chat"
"""The cookie holding the chat page's key (HttpOnly, SameSite=Strict; never readable by the page's JS)."""
CSRF_HEADER = "X-Requested-With"
"""The header a session request must carry (any value; the chat sends ``ragloop-chat``)."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses only this machine can connect to."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_required(server: ServerSettings) -> bool:
    """Whether API keys are enforced: ``on``/``off`` as set; ``auto`` turns them on for any address other
    machines can reach (``0.0.0.0`` included), so exposing the server never silently exposes the data."""
    mode = server.auth.strip().lower()
    if mode == "on":
        return True
    if mode == "off":
        return False
    if mode == "auto":
        return not is_loopback(server.host)
    raise ConfigError(f"[server] auth = {server.auth!r} is not one of auto, on, off.")


def authenticate(db_url: str, secret: str | None) -> Caller:
    """The caller holding this key secret; AuthError (401) when it is missing, wrong or revoked."""
    key = verify_key(db_url, secret)
    return Caller(
        key_id=key.id,
        admin=bool(key.admin),
        collections=None if key.collections is None else [str(c) for c in key.collections],
        name=key.name,
    )


def request_caller(
    db_url: str,
    auth_on: bool,
    bearer: str | None,
    cookie: str | None,
    csrf: str | None,
) -> Caller:
    """The caller of an API request: its ``Authorization`` key when it sends one (or OPEN when auth is
    off), else the chat session's cookie. A session is authenticated by its key even with auth off: the
    key's name is the user the chat records answers and feedback for. A session request without the
    ``X-Requested-With`` header is refused (AuthError, 401: the cookie alone signs nothing in), so another
    site cannot ride the cookie."""
    if bearer or not cookie:
        return authenticate(db_url, bearer) if auth_on else OPEN
    if not csrf:
        raise AuthError(
            f"A request signed in by the chat's cookie must send the {CSRF_HEADER} header "
            "(cross-site request refused); API clients send `Authorization: Bearer <key>` instead."
        )
    who = authenticate(db_url, cookie)
    return Caller(who.key_id, who.admin, who.collections, name=who.name, session=True)


def same_origin(request: Any) -> bool:
    """Whether a form post (``request``: a Starlette request) comes from this server's own pages: the check
    for the sign-in forms (the chat's, the dashboard's), which another site could otherwise post to sign a
    browser in with a key of its choosing (login CSRF). Current browsers say so in ``Sec-Fetch-Site``,
    which a reverse proxy leaves alone (it may rewrite ``Host``); otherwise ``Origin``, which browsers send
    on every POST, must name this host. A request with neither (curl, an old client) is not a browser
    another site could drive."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")  # none: typed or bookmarked by the user
    origin = request.headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.netloc != "" and parts.netloc == request.headers.get("host")


def require_admin(caller: Caller) -> None:
    if not caller.admin:
        raise PermissionDenied("This endpoint needs an admin API key; ask an administrator for one.")


def narrow_scope(caller: Caller, requested: list[str] | None) -> list[str] | None:
    """The collections a request may search: what it asked for, cut to what its key may read.

    An empty result is refused rather than passed on, because an empty scope must never be mistaken for
    "no restriction" further down."""
    requested = list(dict.fromkeys(requested)) if requested else None
    if caller.collections is None:
        return requested
    allowed = [c for c in requested if c in caller.collections] if requested else list(caller.collections)
    if not allowed:
        readable = ", ".join(caller.collections) or "none"
        raise PermissionDenied(f"This API key may only read the collections: {readable}.")
    return allowed


def require_collection(caller: Caller, collection: str) -> None:
    """A scoped admin key may only write into its own collections."""
    if caller.collections is not None and collection not in caller.collections:
        raise PermissionDenied(f"This API key may not write to the collection {collection!r}.")


def may_read_interaction(caller: Caller, api_key_id: str | None) -> bool:
    """Admins (and everyone when auth is off) read every record; other keys only the ones they created."""
    return caller.admin or (caller.key_id is not None and caller.key_id == api_key_id)
