"""Retriever-tuning pairs: (question, positive passage, hard negatives), built from the same records as the
generator's data and stored as a dataset version, so the retriever learns from the loop too (issue 20).

Sources, and what each gives:
- curated records (the same ``load_candidates`` → policy filters → PII → decontamination path as
  ``datasets/build.py``): the positive is a passage a reviewer marked gold or pinned as evidence the retriever
  had missed, else one an accepted answer cited; the negatives are the other passages the retriever really
  returned for that question (the hardest negatives there are: they beat the positive at serve time);
- QA importer files (``datasets/importers.py``): the gold passages, with the item's own distractors
  (HotpotQA ships 8 per question) as negatives;
- a pairs file (JSON lines, format below);
- optionally, for imported items, negatives mined with the current retriever over the knowledge base; the
  dataset records which embedder and KB version mined them (``counts["negatives"]["mined"]``).

Splits are decided on items before pairs are cut (``split_items``: grouped by conversation and by gold
document), so a question's two gold passages, or two questions on one document, never straddle splits.

A pairs file, one JSON object per line::

    {"question": "...", "positive": "text" | {"text": ..., "title": ..., "id": ...},
     "negatives": ["text" | {...}, ...],            # optional
     "id": "...", "group": "..."}                   # optional

A stored pairs dataset (``<home>/data/datasets/pairs-…/{train,val,test}.jsonl``) holds one row per pair::

    {"id", "item_id", "question", "positive": {id, title, text, source_path, section},
     "negatives": [{..., "origin": "shown" | "distractor" | "mined" | "file"}], "group", "source"}
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ragloop.config import Settings
from ragloop.curation.pii.entities import RECOGNIZER_VERSION
from ragloop.curation.policy import Policy
from ragloop.datasets.build import (
    SPLITS,
    _home_secret,
    anonymise_items,
    curated_records,
    decontaminate,
    get_dataset,
    split_items,
)
from ragloop.datasets.importers import read_qa_file
from ragloop.datasets.qa import QAItem, QAPassage, passage_id, passage_text_key, unique_passages
from ragloop.errors import PairsFormatError, RagloopError, TooFewPairs
from ragloop.store.db import session_scope
from ragloop.store.models import DatasetSource, DatasetVersion, Interaction

SOURCE_PREFIX = "pairs:"  # DatasetVersion.source of every pairs dataset: how training tells them apart
ID_PREFIX = "pairs-"
MIN_PAIRS = 8  # fewer cannot fill one contrastive batch; below it the build refuses and writes nothing
MAX_NEGATIVES = 8


@dataclass
class PairsReport:
    dataset_id: str
    created: bool
    counts: dict = field(default_factory=dict)


# Reading pairs files ----------------------------------------------------------------------------------


def _file_passage(value: Any, where: str, what: str) -> QAPassage:
    if isinstance(value, str) and value.strip():
        return QAPassage(id=passage_id("", value), title="", text=value)
    if isinstance(value, dict) and isinstance(value.get("text"), str) and value["text"].strip():
        title = str(value.get("title") or "")
        return QAPassage(
            id=str(value.get("id") or passage_id(title, value["text"])),
            title=title,
            text=value["text"],
            source_path=str(value.get("source_path") or ""),
            section=str(value.get("section") or ""),
        )
    raise PairsFormatError(
        f'{where}: {what} must be a non-empty string or an object with a non-empty "text".'
    )


def read_pairs_file(path: Path | str) -> list[QAItem]:
    """A pairs file as QA items (one gold passage each, the file's negatives as distractors). Stops at the
    first line that is not a pairs record, naming it: a QA file given here by mistake fails, not half-reads."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PairsFormatError(f"Cannot read pairs file {path}: {e}") from None
    items = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}: line {lineno}"
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise PairsFormatError(
                f"{where} is not valid JSON ({e.msg}); a pairs file is JSON lines, one "
                '{"question", "positive", "negatives"} object per line.'
            ) from None
        if not isinstance(r, dict) or not isinstance(r.get("question"), str) or not r["question"].strip():
            raise PairsFormatError(
                f'{where} has no "question" string; a pairs file is JSON lines, one '
                '{"question", "positive", "negatives"} object per line (QA files go to --import).'
            )
        if "positive" not in r:
            raise PairsFormatError(f'{where} has no "positive" passage.')
        positive = _file_passage(r["positive"], where, '"positive"')
        negatives = r.get("negatives") or []
        if not isinstance(negatives, list):
            raise PairsFormatError(f'{where}: "negatives" must be a list.')
        items.append(
            QAItem(
                id=str(r.get("id") or f"{path.name}:{lineno}"),
                question=r["question"].strip(),
                answers=[],
                gold=[positive],
                distractors=[_file_passage(n, where, "each negative") for n in negatives],
                answer_type="free",
                group=str(r.get("group") or ""),
                meta={"source": "file", "negative_origin": "file"},
            )
        )
    return items


# Mining negatives with the current retriever ----------------------------------------------------------


def _squash(text: str) -> str:
    # No whitespace at all: the importers and the chunker join sentences with and without spaces.
    return "".join(text.lower().split())


SHARED_RUN_WORDS = 8  # a chunk sharing this many words in a row with a gold passage overlaps it


def _runs(text: str) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i : i + SHARED_RUN_WORDS]) for i in range(len(words) - SHARED_RUN_WORDS + 1)}


def _is_gold(hit_title: str, hit_text: str, gold: list[QAPassage]) -> bool:
    """A retrieved chunk that is (part of) a gold passage is no negative. Conservative on purpose: a chunk
    inside a gold passage or holding one, or sharing a run of words with one (a chunk straddling its edge),
    is left out, since a false negative (a chunk holding the answer, trained to rank low) harms more than one
    negative fewer. The title alone does not decide: every chunk of one long document (a regulation, a
    handbook) shares its title, so a title rule mined no negative at all from such a knowledge base."""
    text = _squash(hit_text)
    runs = _runs(hit_text)
    for g in gold:
        key = _squash(g.text)
        if text in key or key in text or runs & _runs(g.text):
            return True
    return False


def mine_negatives(
    settings: Settings, items: list[QAItem], k: int, *, embedder: str | None = None
) -> tuple[list[QAItem], dict]:
    """Add to each item up to ``k`` negatives the retriever (hybrid, over the knowledge base) returns for
    its question that are not gold. Returns the items and what mined them (embedder, KB version, k)."""
    from ragloop.ingest.kb import KnowledgeBase  # LanceDB: only when the knowledge base is read
    from ragloop.retrieval.search import Retriever

    kb = KnowledgeBase(settings)
    retriever = Retriever(settings, kb)
    kwargs: dict[str, Any] = {}
    if embedder is not None:
        if "embedder" not in inspect.signature(retriever.search).parameters:
            raise RagloopError(
                "Mining with a tuned embedder needs retrieval by embedder (`kb reembed` first); mine with the "
                "base embedder (no --mine-embedder)."
            )
        kwargs["embedder"] = embedder
    version = kb.version
    vectors: list[Any] = [None] * len(items)
    if embedder is None:  # the base embedder: all questions in batches, not one model call per question
        from ragloop.ingest.embed import get_embedder

        vectors = list(get_embedder(settings.embedding).encode([i.question for i in items]))
    out, added = [], 0
    for item, vector in zip(items, vectors, strict=True):
        hits = retriever.search(item.question, k + len(item.gold) + 2, mode="hybrid", version=version,
                                query_vector=vector, **kwargs)  # fmt: skip
        known = {passage_text_key(p.text) for p in item.distractors}
        mined = []
        for h in hits:
            if _is_gold(h.title, h.text, item.gold) or passage_text_key(h.text) in known:
                continue
            mined.append(QAPassage(h.chunk_id, h.title, h.text, h.source_path, h.section))
            if len(mined) == k:
                break
        added += len(mined)
        origin = dict(item.meta.get("negative_origins") or {})
        origin.update({p.id: "mined" for p in mined})
        out.append(
            replace(
                item, distractors=[*item.distractors, *mined], meta={**item.meta, "negative_origins": origin}
            )
        )
    info = {"embedder": embedder or "base", "kb_version": version or None, "k": k, "mode": "hybrid",
            "added": added}  # fmt: skip
    return out, info


def _drop_eval_negatives(items: list[QAItem], eval_items: list[QAItem]) -> tuple[list[QAItem], int]:
    """Negatives that are an evaluation question's gold passage are dropped too: training must not see an
    evaluation answer's passage at all, even as something to rank low."""
    eval_gold = [_squash(p.text) for p in unique_passages([p for e in eval_items for p in e.gold])]
    exact = set(eval_gold)

    def is_eval_gold(p: QAPassage) -> bool:
        text = _squash(p.text)
        return text in exact or any(text in g or g in text for g in eval_gold)

    out, dropped = [], 0
    for item in items:
        kept = [p for p in item.distractors if not is_eval_gold(p)]
        dropped += len(item.distractors) - len(kept)
        out.append(replace(item, distractors=kept))
    return out, dropped


# Pairs from items -------------------------------------------------------------------------------------


def item_pairs(item: QAItem, max_negatives: int = MAX_NEGATIVES) -> list[dict]:
    """One pair per gold passage of an item; its negatives are the item's distractors that are not also a
    gold passage under another id, first ``max_negatives`` of them, in the order they were ranked."""
    gold = unique_passages(item.gold)
    gold_keys = {passage_text_key(p.text) for p in gold}
    negatives, seen = [], set(gold_keys)
    for p in item.distractors:
        key = passage_text_key(p.text)
        if key not in seen:
            seen.add(key)
            negatives.append(p)
    origins = item.meta.get("negative_origins") or {}
    default_origin = item.meta.get("negative_origin", "distractor")
    rows = []
    for n, p in enumerate(gold):
        rows.append(
            {
                "id": f"{item.id}#{n}",
                "item_id": item.id,
                "question": item.question,
                "positive": asdict(p),
                "negatives": [
                    {**asdict(q), "origin": origins.get(q.id, default_origin)}
                    for q in negatives[:max_negatives]
                ],
                "group": item.group,
                "source": item.meta.get("source", ""),
            }
        )
    return rows


def pairs_hash(splits: dict[str, list[dict]]) -> str:
    digest = hashlib.sha256()
    for name in SPLITS:
        for row in splits.get(name, []):
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
            digest.update(b"\n")
        digest.update(f"--{name}--".encode())
    return digest.hexdigest()


def _record_negatives(settings: Settings, interaction_ids: list[str]) -> dict:
    """Which embedder and KB versions retrieved the records' shown passages (their negatives)."""
    if not interaction_ids:
        return {}
    with session_scope(settings.db_url) as s:
        rows = s.execute(
            select(Interaction.embedder_version, Interaction.kb_version).where(
                Interaction.id.in_(interaction_ids)
            )
        ).all()
    embedders: dict[str, int] = {}
    for embedder, _ in rows:
        embedders[embedder or "base"] = embedders.get(embedder or "base", 0) + 1
    return {"embedders": embedders, "kb_versions": sorted({v for _, v in rows if v is not None})}


def build_pairs(
    settings: Settings,
    policy: Policy,
    *,
    name: str = "pairs",
    from_interactions: bool = True,
    imports: list[tuple[str, Path]] = (),  # type: ignore[assignment]
    pairs_files: list[Path] = (),  # type: ignore[assignment]
    eval_sets: list[Path] = (),  # type: ignore[assignment]
    shared_documents: bool = False,
    mine: int = 0,
    mine_embedder: str | None = None,
    max_negatives: int = MAX_NEGATIVES,
    seed: int = 0,
    min_pairs: int = MIN_PAIRS,
    command: str = "",
) -> PairsReport:
    """Build (or find, when identical) a pairs dataset version with its lineage. Everything is checked and
    computed before anything is written: too few pairs or a malformed file leaves the home unchanged."""
    counts: dict = {"filters": [], "sources": {}, "negatives": {}}
    items: list[QAItem] = []
    source_ids: list[str] = []
    if from_interactions:
        # The user's policy decides how end users' corrections and passage marks count, as for generator data.
        recorded, source_ids = curated_records(settings, policy, counts)
        items += [
            replace(i, meta={**i.meta, "source": "interaction", "negative_origin": "shown"}) for i in recorded
        ]
        counts["negatives"]["from_records"] = _record_negatives(settings, source_ids)
    for fmt, path in imports:
        got = read_qa_file(Path(path), fmt)
        counts["sources"][f"import:{Path(path).name}"] = len(got)
        items += [replace(i, meta={**i.meta, "source": f"import:{Path(path).name}"}) for i in got]
    for path in pairs_files:
        got = read_pairs_file(path)
        counts["sources"][f"pairs:{Path(path).name}"] = len(got)
        items += got
    if eval_sets:
        eval_items = [e for path in eval_sets for e in read_qa_file(Path(path))]
        items, counts["decontamination"] = decontaminate(items, eval_items, shared_documents=shared_documents)
    if mine > 0:  # records already hold the negatives their retriever really returned
        imported = [i for i in items if str(i.meta.get("source", "")).startswith("import:")]
        others = [i for i in items if not str(i.meta.get("source", "")).startswith("import:")]
        imported, counts["negatives"]["mined"] = mine_negatives(
            settings, imported, mine, embedder=mine_embedder
        )
        items = others + imported
    if eval_sets:
        items, counts["decontamination"]["eval_gold_negatives_dropped"] = _drop_eval_negatives(
            items, eval_items
        )
    n_pairs = sum(len(unique_passages(i.gold)) for i in items)
    if n_pairs < min_pairs:
        raise TooFewPairs(
            f"Only {n_pairs} (question, positive passage) pairs after curation (need at least {min_pairs}). "
            "Rate answers and pin evidence (`ragloop feedback … --gold/--evidence`), relax the policy, or add "
            "`--import FILE` / `--pairs FILE`."
        )
    secret = _home_secret(settings)
    items, counts["pii"] = anonymise_items(items, policy, settings.data_dir / "pii-vault.json", secret)
    split = split_items(items, policy.split, seed)
    rows = {s: [row for item in split[s] for row in item_pairs(item, max_negatives)] for s in SPLITS}
    counts["examples"] = {s: len(v) for s, v in rows.items()}
    counts["items"] = {s: len(v) for s, v in split.items()}
    digest = pairs_hash(rows)
    dataset_id = f"{ID_PREFIX}{digest[:12]}"
    pii_recognizer = RECOGNIZER_VERSION if policy.pii.get("enabled", True) else None
    with session_scope(settings.db_url) as s:
        if s.get(DatasetVersion, dataset_id) is not None:
            return PairsReport(dataset_id, False, counts)
    from ragloop.ingest.kb import KnowledgeBase

    kb_version = KnowledgeBase(settings).version or None
    folder = settings.data_dir / "datasets" / dataset_id
    folder.mkdir(parents=True, exist_ok=True)
    for split_name, split_rows in rows.items():
        with (folder / f"{split_name}.jsonl").open("w", encoding="utf-8") as fh:
            for row in split_rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    recorded_policy = {**policy.to_dict(), "pairs": {"max_negatives": max_negatives, "mine": mine,
                                                     "mine_embedder": mine_embedder}}  # fmt: skip
    (folder / "policy.json").write_text(json.dumps(recorded_policy, indent=2))
    (folder / "report.json").write_text(json.dumps(counts, indent=2, default=str))
    sources = ["interactions"] * from_interactions
    sources += [f"import:{Path(p).name}" for _, p in imports] + [f"file:{Path(p).name}" for p in pairs_files]
    with session_scope(settings.db_url) as s:
        s.add(
            DatasetVersion(
                id=dataset_id,
                name=name,
                content_hash=digest,
                policy=recorded_policy,
                source=(SOURCE_PREFIX + "+".join(sources))[:256],
                kb_version=kb_version,
                seed=seed,
                path=str(folder),
                counts=counts,
                command=command,
                pii_recognizer=pii_recognizer,
            )
        )
        s.flush()
        for iid in dict.fromkeys(source_ids):  # erasure follows these links, as for any dataset
            s.add(DatasetSource(dataset_id=dataset_id, interaction_id=iid))
    return PairsReport(dataset_id, True, counts)


# Reading a stored pairs dataset -----------------------------------------------------------------------


def is_pairs_dataset(dv: DatasetVersion) -> bool:
    return dv.source.startswith(SOURCE_PREFIX)


def load_pairs(settings: Settings, dataset_id: str, split: str | None = None) -> dict[str, list[dict]]:
    """A pairs dataset's rows per split; PairsFormatError for a dataset of another kind (a RAFT dataset
    given to the embedder trainer) or a row that is not a pair."""
    dv = get_dataset(settings.db_url, dataset_id)
    if not is_pairs_dataset(dv):
        raise PairsFormatError(
            f"Dataset {dataset_id} is a generator dataset (source {dv.source!r}), not retriever pairs; build "
            "one with `ragloop dataset pairs`."
        )
    out = {}
    for name in [split] if split else SPLITS:
        path = Path(dv.path) / f"{name}.jsonl"
        rows = []
        for lineno, line in enumerate(
            path.read_text(encoding="utf-8").splitlines() if path.exists() else [], 1
        ):
            row = json.loads(line)
            if not (isinstance(row.get("question"), str) and isinstance(row.get("positive"), dict)):
                raise PairsFormatError(f"{path}: line {lineno} is not a pair (question, positive).")
            rows.append(row)
        out[name] = rows
    return out
