"""What the model is shown for each eval question: the retrieval condition, rendered by the serve-time
template.

Conditions (``k`` = number of distractors):

* ``oracle``: the gold passages only;
* ``distractors``: the gold passages and ``k`` distractors;
* ``no-gold``: ``k`` distractors, the gold removed (the right answer is then an abstention);
* ``closed-book``: no passages at all (the template's no-passage form);
* ``live``: what the knowledge base's own retriever returns for the question (top ``k``).

Distractors are the item's own (hard negatives: HotpotQA's other paragraphs, SQuAD's other paragraphs of
the same article), topped up from the passages of the other items of the same file. Every choice is seeded
by (seed, item id), so a question gets the same context whatever else is evaluated with it, and the
distractors for k=2 are the first two of those for k=4: a robustness curve adds noise, never reshuffles it.
Prompts are rendered exactly as serving renders them (and as the RAFT builder did for training).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ragloop.datasets.qa import QAItem, QAPassage, passage_text_key, prompt_question, unique_passages
from ragloop.errors import RagloopError
from ragloop.generation.prompts import PromptTemplate, prompt_sha256

if TYPE_CHECKING:  # LanceDB loads only for the live condition, which passes a Retriever in
    from ragloop.retrieval.search import Hit, Retriever

CONDITIONS = ("oracle", "distractors", "no-gold", "closed-book", "live")
DEFAULT_DISTRACTORS = 4  # with one gold passage: the five passages the RAFT builder shows by default


@dataclass
class EvalCase:
    """One question ready to generate for: the passages shown (numbered [1].. in this order), which of
    them count as gold, and the exact prompt (its sha256 is stored, so a rebuilt case can be checked)."""

    item: QAItem
    passages: list[QAPassage]
    gold_ids: list[str]
    prompt: list[dict]
    prompt_sha256: str
    kb_version: int | None = None
    scores: dict = field(default_factory=dict)  # retrieval facts for ``live`` (passage scores)


def default_k(condition: str, k: int | None) -> int | None:
    """The number of distractors a condition uses: as given, else DEFAULT_DISTRACTORS where distractors
    are shown; None where the notion does not apply (oracle, closed-book; live uses top_k)."""
    if condition not in CONDITIONS:
        raise RagloopError(f"Unknown condition {condition!r}; use one of {', '.join(CONDITIONS)}.")
    if condition in ("distractors", "no-gold"):
        k = DEFAULT_DISTRACTORS if k is None else k
        if k < 0:
            raise RagloopError(f"--distractors must be 0 or more, got {k}.")
        return k
    return None


def _rng(seed: int, item_id: str, purpose: str) -> random.Random:
    # sha256, not hash(): the same stream on every run and machine, whatever PYTHONHASHSEED says.
    digest = hashlib.sha256(f"{seed}\x00{item_id}\x00{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def distractor_stream(item: QAItem, pool: Sequence[QAPassage], seed: int) -> Iterator[QAPassage]:
    """The item's distractors in their seeded order: its own first, then random passages of the pool.
    Never a gold passage (by id, or by text under another id). Taking the first k gives the k
    distractors, so the sets for growing k are nested."""
    rng = _rng(seed, item.id, "distractors")
    banned_ids = {p.id for p in item.gold}
    banned_texts = {passage_text_key(p.text) for p in item.gold}

    def take(p: QAPassage) -> bool:
        if p.id in banned_ids or passage_text_key(p.text) in banned_texts:
            return False
        banned_ids.add(p.id)
        return True

    own = unique_passages(item.distractors)
    rng.shuffle(own)
    for p in own:
        if take(p):
            yield p
    if not pool:
        return
    # Rejection sampling: O(k) per item on a pool of 100,000 passages; a mostly used-up pool is scanned.
    for _ in range(64):
        p = pool[rng.randrange(len(pool))]
        if take(p):
            yield p
    rest = list(pool)
    rng.shuffle(rest)
    for p in rest:
        if take(p):
            yield p


def choose_passages(
    item: QAItem, condition: str, k: int | None, pool: Sequence[QAPassage], seed: int
) -> list[QAPassage]:
    """The passages shown for ``item`` under a file-based condition (not ``live``), in prompt order."""
    if condition == "closed-book":
        return []
    gold = unique_passages(item.gold) if condition in ("oracle", "distractors") else []
    distractors: list[QAPassage] = []
    if condition in ("distractors", "no-gold") and k:
        stream = distractor_stream(item, pool, seed)
        distractors = [p for _, p in zip(range(k), stream, strict=False)]
    shown = gold + distractors
    _rng(seed, item.id, "order").shuffle(shown)
    return shown


def skip_reason(item: QAItem, condition: str) -> str | None:
    """Why ``item`` cannot be evaluated under ``condition`` (None when it can): the gold-showing
    conditions need the gold passages, and an unanswerable question has none to show in ``oracle``."""
    if condition not in ("oracle", "distractors") or item.gold:
        return None
    if not item.answers:
        return "unanswerable (no gold to show)" if condition == "oracle" else None
    if item.meta.get("gold_missing"):
        return "gold passages not stored in the dataset version"
    return "no gold passage"


def hit_passage(hit: Hit) -> QAPassage:
    """A retrieved chunk as a QA passage (its id is the chunk id the KB knows it by)."""
    return QAPassage(
        id=hit.chunk_id, title=hit.title, text=hit.text, source_path=hit.source_path, section=hit.section
    )


def live_gold_ids(item: QAItem, shown: Sequence[QAPassage]) -> list[str]:
    """Which retrieved chunks count as gold: a chunk with a gold id, or whose text contains a gold
    passage's or is contained in one (the KB cuts documents into chunks, so ids rarely match)."""
    golds = [passage_text_key(p.text) for p in item.gold]
    ids = [p.id for p in item.gold]
    for p in shown:
        text = passage_text_key(p.text)
        if p.id in ids or any(g and (g in text or (len(text) > 40 and text in g)) for g in golds):
            ids.append(p.id)
    return list(dict.fromkeys(ids))


def build_case(
    item: QAItem,
    condition: str,
    k: int | None,
    pool: Sequence[QAPassage],
    seed: int,
    template: PromptTemplate,
    *,
    retriever: Retriever | None = None,
    top_k: int | None = None,
    kb_version: int | None = None,
    embedder: str | None = None,
) -> EvalCase:
    """The case for one item; ``live`` searches the KB (at ``kb_version`` when given, for rebuilding) with
    ``embedder``'s vectors (None: the base embedder's)."""
    extra: dict = {}
    if condition == "live":
        if retriever is None:
            raise RagloopError("The live condition needs the knowledge base's retriever.")
        hits = retriever.search(item.question, top_k, version=kb_version, embedder=embedder)
        shown = [hit_passage(h) for h in hits]
        gold_ids = live_gold_ids(item, shown)
        extra = {"retrieval_scores": [round(h.score, 6) for h in hits]}
    else:
        shown = choose_passages(item, condition, k, pool, seed)
        gold_ids = [p.id for p in unique_passages(item.gold)]
    prompt = template.render([{"role": "user", "content": prompt_question(item)}], shown)
    return EvalCase(item, shown, gold_ids, prompt, prompt_sha256(prompt), kb_version, extra)
