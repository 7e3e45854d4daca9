"""The web UI: server-rendered pages (Jinja2 + htmx) for people who review answers.

Views only: they read records, call the feedback stage, and render. When API keys are on, the UI needs an
admin key, given once on /login and kept in an HttpOnly cookie (never in a URL, so it stays out of logs).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape

from ragloop.config import Settings
from ragloop.errors import AuthError, PermissionDenied, RagloopError
from ragloop.feedback.review import (
    end_user_suggestion,
    get_review_item,
    pending,
    queue_counts,
    sample_queue,
    save_review,
    skip_item,
)
from ragloop.generation.replay import ShownPassage, shown_passages
from ragloop.ingest.kb import KnowledgeBase
from ragloop.serve.auth import Caller, authenticate, narrow_scope, require_admin
from ragloop.store.queries import iter_interactions

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
COOKIE = "ragloop_key"


def highlight(text: str, spans: list[tuple[int, int]]) -> Markup:
    """Escape ``text`` and wrap the given character spans in <mark> (overlaps merged)."""
    out, pos = [], 0
    for start, end in sorted(_merge(spans)):
        out += [escape(text[pos:start]), Markup("<mark>"), escape(text[start:end]), Markup("</mark>")]
        pos = end
    out.append(escape(text[pos:]))
    return Markup("").join(out)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(e, merged[-1][1]))
        else:
            merged.append((s, e))
    return merged


def ui_router(settings: Settings, auth_on: bool) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    kb = KnowledgeBase(settings)

    def caller(request: Request) -> Caller | None:
        """The reviewer, or None (the page then redirects to /login)."""
        if not auth_on:
            return Caller(key_id=None, admin=True, collections=None)
        header = request.headers.get("authorization", "")
        secret = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE)
        try:
            who = authenticate(settings.db_url, secret)
            require_admin(who)
        except RagloopError:
            return None
        return who

    def login_redirect() -> RedirectResponse:
        return RedirectResponse("/login", status_code=303)

    @router.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, error: str | None = None) -> HTMLResponse:
        html = (
            "{% extends 'base.html' %}{% block main %}<form class='card' method='post' action='/login'>"
            "<h2>Sign in</h2><p class='muted'>Paste an admin API key (create one with "
            "<code>ragloop keys create NAME --admin</code>).</p><input type='password' name='key' style='width:100%'>"
            "{% if error %}<p class='error'>{{ error }}</p>{% endif %}<p><button class='primary'>Sign in</button></p>"
            "</form>{% endblock %}"
        )
        template = TEMPLATES.env.from_string(html)
        return HTMLResponse(template.render(request=request, error=error, url_for=request.url_for))

    @router.post("/login")
    def login(request: Request, key: str = Form(...)) -> Response:
        try:
            require_admin(authenticate(settings.db_url, key))
        except (AuthError, RagloopError) as exc:
            return login_page(request, error=str(exc))
        response = RedirectResponse("/review", status_code=303)
        response.set_cookie(COOKIE, key, httponly=True, samesite="strict")
        return response

    @router.get("/review", response_class=HTMLResponse)
    def review_home(request: Request, queue: str = "default") -> Response:
        if caller(request) is None:
            return login_redirect()
        items = pending(settings.db_url, queue, limit=1)
        if items:
            return RedirectResponse(f"/review/item/{items[0].id}", status_code=303)
        counts = queue_counts(settings.db_url, queue)
        return TEMPLATES.TemplateResponse(request, "review_empty.html", {"queue": queue, "counts": counts})

    @router.post("/review/sample")
    def review_sample(request: Request, queue: str = Form("default"), n: int = Form(20)) -> Response:
        if caller(request) is None:
            return login_redirect()
        sample_queue(settings.db_url, max(1, min(n, 500)), queue=queue)
        return RedirectResponse(f"/review?queue={queue}", status_code=303)

    @router.get("/review/item/{item_id}", response_class=HTMLResponse)
    def review_item(request: Request, item_id: int) -> Response:
        who = caller(request)
        if who is None:
            return login_redirect()
        found = get_review_item(settings.db_url, item_id)
        if found is None:
            return HTMLResponse("No such review item.", status_code=404)
        item, interaction = found
        remaining = len(pending(settings.db_url, item.queue, limit=10_000))
        eval_passages = (
            (interaction.filters or {}).get("eval_passages") if interaction.source == "eval" else None
        )
        if eval_passages is not None:  # eval answers: the passages shown are stored with the record
            shown = [
                ShownPassage(
                    str(p.get("passage_id", "")),
                    "",
                    p.get("title", ""),
                    p.get("source_path", ""),
                    p.get("section", ""),
                    p.get("text", ""),
                )
                for p in eval_passages
            ]
        else:
            shown, _ = shown_passages(kb, interaction)
        cites: dict[int, list[tuple[int, int]]] = {}
        for c in interaction.citations:
            if c.get("valid") and c.get("cited_start") is not None:
                cites.setdefault(c["n"], []).append((c["cited_start"], c["cited_end"]))
        passages = [
            {
                "rank": rec.rank,
                "title": rec.title,
                "source_path": rec.source_path,
                "section": rec.section,
                "score": rec.score,
                "cited": rec.rank in cites,
                "html": highlight(p.text, cites.get(rec.rank, [])),
            }
            for rec, p in zip(interaction.passages, shown, strict=False)
        ]
        context = {
            "item": item,
            "interaction": interaction,
            "passages": passages,
            "remaining": remaining,
            "question": interaction.messages[-1]["content"],
            "answer_html": escape(interaction.answer),
            "reviewer": who.key_id or "reviewer",
            "suggested": end_user_suggestion(settings.db_url, interaction.id),
        }
        return TEMPLATES.TemplateResponse(request, "review_item.html", context)

    @router.post("/review/item/{item_id}", response_class=HTMLResponse)
    async def review_save(request: Request, item_id: int) -> Response:
        who = caller(request)
        if who is None:
            return HTMLResponse("<span class='error'>Signed out: reload and sign in.</span>", status_code=401)
        form = await request.form()
        data: dict = {"reviewer_id": form.get("reviewer_id") or "reviewer"}
        if form.get("thumbs"):
            data["thumbs"] = form.get("thumbs")
        if form.get("rating"):
            data["rating"] = int(str(form.get("rating")))
        for name in ("corrected_answer", "comment"):
            if str(form.get(name) or "").strip():
                data[name] = str(form.get(name))
        gold = [int(str(v)) for v in form.getlist("gold")]
        if gold:
            data["gold"] = gold
        evidence = [str(v) for v in form.getlist("evidence") if str(v).strip()]
        if evidence:
            data["evidence"] = evidence
        try:
            item = save_review(settings.db_url, item_id, data, kb=kb, readable=who.collections)
        except RagloopError as exc:
            return HTMLResponse(f"<span class='error'>{escape(str(exc))}</span>", status_code=400)
        if item is None:
            return HTMLResponse("<span class='error'>No such review item.</span>", status_code=404)
        return _next(item.queue, "Saved")

    retriever: list = []  # one Retriever (and embedding model) for the UI, built on first use

    @router.get("/review/item/{item_id}/search", response_class=HTMLResponse)
    def review_search(request: Request, item_id: int, evidence_query: str = "") -> Response:
        """Knowledge-base passages the retriever did not show for this answer, found by the reviewer's own
        words: the one that supports a correction becomes evidence (the example's gold passage). Searched
        at the answer's KB version and within its collections, as ``add_feedback`` requires, and only in
        collections the reviewer's key may read."""
        who = caller(request)
        if who is None:
            return HTMLResponse("<span class='error'>Signed out: reload and sign in.</span>", status_code=401)
        query = evidence_query.strip()
        if not query:
            return HTMLResponse("")
        found = get_review_item(settings.db_url, item_id)
        if found is None:
            return HTMLResponse("<span class='error'>No such review item.</span>", status_code=404)
        _, interaction = found
        if interaction.source == "eval":
            return HTMLResponse("<span class='muted'>Eval answers are never trained on: no evidence.</span>")
        shown = {p.chunk_id for p in interaction.passages}
        version, scope = interaction.kb_version, interaction.collections
        if version is None:
            return HTMLResponse(
                "<span class='muted'>Answered from an empty knowledge base: no evidence.</span>"
            )
        try:
            scope = narrow_scope(who, scope)  # the answer's collections, cut to the reviewer's
        except PermissionDenied as exc:
            return HTMLResponse(f"<span class='error'>{escape(str(exc))}</span>", status_code=403)
        if not retriever:
            from ragloop.retrieval.search import Retriever

            retriever.append(Retriever(settings, kb))
        try:
            hits = retriever[0].search(query[:500], 8 + len(shown), collections=scope, version=version)
        except RagloopError as exc:
            return HTMLResponse(f"<span class='error'>{escape(str(exc))}</span>", status_code=400)
        hits = [h for h in hits if h.chunk_id not in shown][:8]
        return TEMPLATES.TemplateResponse(request, "review_hits.html", {"hits": hits, "query": query})

    @router.post("/review/item/{item_id}/skip", response_class=HTMLResponse)
    def review_skip(request: Request, item_id: int) -> Response:
        if caller(request) is None:
            return HTMLResponse("<span class='error'>Signed out.</span>", status_code=401)
        item = skip_item(settings.db_url, item_id)
        if item is None:
            return HTMLResponse("<span class='error'>No such review item.</span>", status_code=404)
        return _next(item.queue, "Skipped")

    def _next(queue: str, message: str) -> HTMLResponse:
        response = HTMLResponse(f"<span class='saved'>{message}</span>")
        response.headers["HX-Redirect"] = f"/review?queue={queue}"
        return response

    @router.get("/interactions", response_class=HTMLResponse)
    def interactions(request: Request, text: str | None = None, model: str | None = None) -> Response:
        if caller(request) is None:
            return login_redirect()
        rows = list(iter_interactions(settings.db_url, limit=200, text=text or None, model=model or None))
        return TEMPLATES.TemplateResponse(
            request, "interactions.html", {"rows": rows[::-1], "text": text, "model": model}
        )

    return router
