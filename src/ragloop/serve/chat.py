"""The chat page: where end users ask, read cited answers, open the passages cited, and say what was wrong.

A door only: the page's own script (``static/chat.js``) asks ``POST /v1/chat/completions`` (streamed) and
sends feedback to ``POST /api/interactions/{id}/feedback``, the routes every API client uses, so A/B
assignment, a scoped key's collections, request errors and the interaction records apply unchanged. What
this module adds is the sign-in (any live key; its name is the user id the answers are recorded for, so
A/B units and erasure requests follow the person) and one read: a cited passage of a turn the key may read.

The key lives in an HttpOnly, SameSite=Strict cookie (``auth.SESSION_COOKIE``): the page's script never
sees it and it never enters a URL. Requests signed in by the cookie must carry ``X-Requested-With``
(``auth.request_caller``); the sign-in and sign-out forms, which cannot, are refused from another origin.
"""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from ragloop.config import Settings
from ragloop.errors import NotFound, RagloopError
from ragloop.generation.replay import shown_passages
from ragloop.serve.auth import (
    CSRF_HEADER,
    SESSION_COOKIE,
    Caller,
    authenticate,
    may_read_interaction,
    request_caller,
    same_origin,
)
from ragloop.store.queries import visible_interaction

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
# A browser session lasts a working week, then asks for the key again.
SESSION_MAX_AGE_S = 7 * 24 * 3600


def chat_router(settings: Settings, auth_on: bool) -> APIRouter:
    """The chat page's routes for one project home (``auth_on``: whether the API enforces keys)."""
    router = APIRouter(include_in_schema=False)
    db_url = settings.db_url

    def session(request: Request) -> Caller | None:
        """The signed-in user of the page, or None (the page then asks for a key)."""
        try:
            return authenticate(db_url, request.cookies.get(SESSION_COOKIE))
        except RagloopError:
            return None

    def sign_in_page(request: Request, error: str | None = None, status: int = 200) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(
            request, "chat.html", {"user": None, "error": error}, status_code=status
        )

    @router.get("/chat", response_class=HTMLResponse)
    def chat_page(request: Request) -> Response:
        who = session(request)
        if who is None:
            return sign_in_page(request)
        context = {"user": who.name, "csrf_header": CSRF_HEADER, "error": None}
        return TEMPLATES.TemplateResponse(request, "chat.html", context)

    @router.post("/chat/login")
    def chat_login(request: Request, key: str = Form("")) -> Response:
        if not same_origin(request):
            return sign_in_page(request, "Sign in from this server's own page.", status=403)
        try:
            authenticate(db_url, key.strip())
        except RagloopError as exc:
            return sign_in_page(request, str(exc), status=401)
        response = RedirectResponse("/chat", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            key.strip(),
            max_age=SESSION_MAX_AGE_S,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/chat/logout")
    def chat_logout(request: Request) -> Response:
        if not same_origin(request):
            return HTMLResponse("Sign out from this server's own page.", status_code=403)
        response = RedirectResponse("/chat", status_code=303)
        response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
        return response

    @router.get("/chat/passages/{interaction_id}/{n}")
    def cited_passage(request: Request, interaction_id: str, n: int) -> JSONResponse:
        """Passage ``[n]`` of a recorded turn, as the model was shown it (read back at the turn's KB
        version), for a key that may read the turn: its own turns, or any for an admin key. JSON, so the
        page puts the text in as text: documents are untrusted and are never parsed as HTML."""
        try:
            header = request.headers.get("authorization", "")
            who = request_caller(
                db_url,
                auth_on,
                header[7:].strip() if header.lower().startswith("bearer ") else None,
                request.cookies.get(SESSION_COOKIE),
                request.headers.get(CSRF_HEADER),
            )
            interaction = visible_interaction(
                db_url, interaction_id, functools.partial(may_read_interaction, who)
            )
            recorded = next((p for p in interaction.passages if p.rank == n), None)
            if recorded is None:
                raise NotFound(f"The answer showed no passage [{n}].")
            if who.collections is not None and recorded.collection not in who.collections:
                # As if absent, as the dashboard answers a record out of scope: a 403 told a scoped admin
                # key that this turn exists and read another collection.
                raise NotFound(f"No interaction {interaction_id!r} visible to this API key.")
            shown, _ = shown_passages(request.app.state.assistant.kb, interaction)
            text = next((p.text for p in shown if p.chunk_id == recorded.chunk_id), None)
        except RagloopError as exc:
            return JSONResponse({"error": {"message": str(exc)}}, status_code=exc.status)
        return JSONResponse(
            {
                "n": n,
                "title": recorded.title,
                "source_path": recorded.source_path,
                "section": recorded.section,
                "collection": recorded.collection,
                # None: the knowledge base no longer holds the version it was read at (compacted away)
                "text": text,
            }
        )

    return router
