"""Dataset versions: curated records (and/or imported QA sets) -> anonymised, split, RAFT-formatted,
content-hashed, immutable training data.

The order of operations matters: PII is replaced before anything is rendered (so no prompt, target or
export ever holds a raw identifier), the split is decided before RAFT sampling (so no gold document is in
two splits), and evaluation questions are removed before the split (decontamination).
"""

from __future__ import annotations

import hashlib
import json
import random
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from sqlalchemy import select

from ragloop.config import Settings
from ragloop.curation.dedupe import near_duplicate_of
from ragloop.curation.pii.entities import RECOGNIZER_VERSION
from ragloop.curation.pipeline import apply_filters, load_candidates
from ragloop.curation.policy import Policy
from ragloop.curation.verify import quantities
from ragloop.datasets.answers import normalise_answer, token_f1
from ragloop.datasets.importers import read_qa_file
from ragloop.datasets.qa import QAItem, QAPassage, passage_pool
from ragloop.datasets.raft import RaftConfig, RaftExample, build_raft_examples, misled_answer
from ragloop.errors import NotFound, RagloopError
from ragloop.generation.citations import CITE
from ragloop.store.db import SessionOrUrl, session_of, session_scope
from ragloop.store.models import DatasetSource, DatasetVersion, ModelVersion

SPLITS = ("train", "val", "test")


@dataclass
class BuildReport:
    dataset_id: str
    created: bool
    counts: dict = field(default_factory=dict)


def candidates_to_items(candidates) -> list[QAItem]:  # type: ignore[no-untyped-def]
    """Live traffic as QA items: oracle = gold-marked (else cited) passages; distractors = the other
    passages the retriever really returned for that question (hard negatives)."""
    items = []
    for c in candidates:
        passages = [
            QAPassage(id=p.chunk_id, title=p.title, text=p.text, source_path=p.source_path, section=p.section)
            for p in c.passages
        ]
        oracle = set(c.oracle_ranks)
        answer = " ".join(CITE.sub("", c.answer).split())
        items.append(
            QAItem(
                id=c.interaction_id,
                question=c.question,
                answers=[answer],
                gold=[p for r, p in enumerate(passages, 1) if r in oracle],
                distractors=[p for r, p in enumerate(passages, 1) if r not in oracle],
                answer_type="free",
                group=c.conversation_id,
                meta={
                    "interaction_id": c.interaction_id,
                    "rejected": c.rejected,
                    "kb_version": c.kb_version,
                    "from_correction": c.from_correction,
                },
            )
        )
    return items


def anonymise_items(
    items: list[QAItem], policy: Policy, vault: Path | None, secret: str, *, many_origins: bool = True
) -> tuple[list[QAItem], dict]:
    """Replace PII in question, answers, passages and rejected answer with the same pseudonym per entity,
    across the whole set: a name found in one item is replaced in every other item that mentions it.
    ``many_origins=False`` runs the recognizers as they were before issue 15 (bench/curation.py)."""
    if not policy.pii.get("enabled", True):
        return items, {}
    from ragloop.curation.pii import Anonymizer

    anon = Anonymizer(
        entities=policy.pii.get("entities"),
        vault_path=vault if policy.pii.get("vault") else None,
        secret=secret,
        many_origins=many_origins,
    )
    fields = [
        {
            "question": item.question,
            "answers": list(item.answers),
            "gold": [p.text for p in item.gold],
            "distractors": [p.text for p in item.distractors],
            "rejected": item.meta.get("rejected") or "",
            "reasoning": item.reasoning or "",
        }
        for item in items
    ]
    out = []
    for item, a in zip(items, anon.anonymize_examples(fields), strict=True):
        meta = dict(item.meta, rejected=a["rejected"] or None)
        out.append(
            replace(
                item,
                question=a["question"],
                answers=a["answers"],
                reasoning=a["reasoning"] or None,
                meta=meta,
                gold=[replace(p, text=t) for p, t in zip(item.gold, a["gold"], strict=True)],
                distractors=[
                    replace(p, text=t) for p, t in zip(item.distractors, a["distractors"], strict=True)
                ],
            )
        )
    return out, dict(anon.stats)


def decontaminate(
    items: list[QAItem], eval_items: list[QAItem], threshold: float = 0.8, *, shared_documents: bool = False
) -> tuple[list[QAItem], dict]:
    """Drop items that would leak an evaluation answer: the same question (nearly) with the same answer,
    or an evaluation gold passage (by normalised text hash).

    A near-duplicate question with another answer is kept and counted: sets with templated questions
    (PolicyQA asks "what data is collected?" of every website) would otherwise lose almost everything
    (211 of 240 PolicyQA training questions) though each is about another document with another answer.
    ``shared_documents`` keeps items that share a gold passage with the evaluation: the RAFT setting itself
    (new questions on the documents the model will be examined on; APIBench's split by request)."""

    def key(text: str) -> str:
        return hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()

    def same_answer(a: str, b: str) -> bool:
        na, nb = normalise_answer(a), normalise_answer(b)
        if not (na and nb):
            return False
        return na in nb or nb in na or token_f1(a, b) >= 0.5 or bool(quantities(a) & quantities(b))

    eval_gold = {key(p.text) for e in eval_items for p in e.gold}
    near = near_duplicate_of([i.question for i in items], [e.question for e in eval_items], threshold)
    kept, by_question, by_gold, other_answer = [], 0, 0, 0
    for item, dup in zip(items, near, strict=True):
        if dup:
            answered = [e.question for e in eval_items
                        if any(same_answer(a, b) for a in item.answers for b in e.answers)]  # fmt: skip
            dup = bool(answered) and near_duplicate_of([item.question], answered, threshold)[0]
            other_answer += not dup
        if dup:
            by_question += 1
        elif not shared_documents and any(key(p.text) in eval_gold for p in item.gold):
            by_gold += 1
        else:
            kept.append(item)
    counts = {"near_duplicate_question": by_question, "shared_gold_passage": by_gold,
              "kept_same_question_other_answer": other_answer, "shared_documents_kept": shared_documents}  # fmt: skip
    return kept, counts


def document_key(p: QAPassage) -> str:
    """The 'document' a gold passage belongs to, for leakage-free splits: its top-level section unit
    (an article of a regulation, a chapter of a handbook) within its source file, else the file or title.
    A single-file corpus such as one regulation then still splits, article by article."""
    return f"{p.source_path or p.title}|{p.section or p.title}"


def split_items(items: list[QAItem], shares: dict[str, float], seed: int) -> dict[str, list[QAItem]]:
    """Grouped split: items sharing a conversation/group or any gold passage's document (``document_key``)
    land in the same split (union-find over those keys), so no gold document spans two splits."""
    parent = list(range(len(items)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    owner: dict[str, int] = {}
    for idx, item in enumerate(items):
        keys = [f"g:{item.group}"] if item.group else []
        keys += [f"d:{document_key(p)}" for p in item.gold]
        for k in keys:
            if k in owner:
                parent[find(idx)] = find(owner[k])
            else:
                owner[k] = idx
    groups: dict[int, list[int]] = {}
    for idx in range(len(items)):
        groups.setdefault(find(idx), []).append(idx)
    order = sorted(
        groups.values(), key=lambda g: hashlib.sha256(f"{seed}:{items[g[0]].id}".encode()).hexdigest()
    )
    out: dict[str, list[QAItem]] = {s: [] for s in SPLITS}
    total = len(items)
    targets = {s: shares.get(s, 0.0) * total for s in SPLITS}
    for group in order:  # greedy: the split furthest below its target share takes the next group
        name = max(
            SPLITS, key=lambda s: (targets[s] - len(out[s])) / (targets[s] or 1e-9) if targets[s] else -1e9
        )
        out[name].extend(items[i] for i in sorted(group))
    return out


def content_hash(splits: dict[str, list[RaftExample]]) -> str:
    digest = hashlib.sha256()
    for name in SPLITS:
        for ex in splits.get(name, []):
            digest.update(json.dumps(asdict(ex), sort_keys=True, ensure_ascii=False).encode())
            digest.update(b"\n")
        digest.update(f"--{name}--".encode())
    return digest.hexdigest()


def curated_records(settings: Settings, policy: Policy, counts: dict) -> tuple[list[QAItem], list[str]]:
    """The recorded interactions that pass the policy's filters, as QA items, with their ids; what each
    filter dropped goes into ``counts``. The one reading of records behind generator and retriever data, so
    both follow the same policy (end users' corrections included)."""
    candidates = load_candidates(settings, policy=policy)
    counts["sources"]["interactions"] = len(candidates)
    kept, reports = apply_filters(candidates, policy)
    counts["filters"] = [
        {"filter": r.name, "before": r.before, "dropped": r.dropped, "reasons": r.reasons} for r in reports
    ]
    return candidates_to_items(kept), [c.interaction_id for c in kept]


def build_dataset(
    settings: Settings,
    policy: Policy,
    *,
    name: str = "dataset",
    from_interactions: bool = True,
    imports: list[tuple[str, Path]] = (),  # type: ignore[assignment]
    eval_sets: list[Path] = (),  # type: ignore[assignment]
    shared_documents: bool = False,
    seed: int = 0,
    min_examples: int = 0,
    command: str = "",
) -> BuildReport:
    """Build (or find, when identical) a dataset version and record it with its lineage."""
    counts: dict = {"filters": [], "sources": {}}
    items: list[QAItem] = []
    source_ids: list[str] = []
    if from_interactions:
        recorded, source_ids = curated_records(settings, policy, counts)
        items += recorded
    for fmt, path in imports:
        imported = read_qa_file(Path(path), fmt)
        counts["sources"][f"import:{Path(path).name}"] = len(imported)
        items += imported
    if not items:
        raise RagloopError(
            "Nothing to build from: no interaction passed curation and no import was given. Rate some answers "
            "(`ragloop feedback`), relax the policy, or add `--import FILE` (e.g. the output of `ragloop synth`)."
        )
    if len(items) < min_examples:
        raise RagloopError(
            f"Only {len(items)} examples passed curation (< --min-examples {min_examples}); "
            "top up with `ragloop synth` and `--import`."
        )
    if eval_sets:
        eval_items = [e for path in eval_sets for e in read_qa_file(Path(path))]
        items, counts["decontamination"] = decontaminate(items, eval_items, shared_documents=shared_documents)
    secret = _home_secret(settings)
    vault = settings.data_dir / "pii-vault.json"
    items, counts["pii"] = anonymise_items(items, policy, vault, secret)
    split = split_items(items, policy.split, seed)
    from ragloop.ingest.kb import KnowledgeBase  # LanceDB: only when the knowledge base is read

    kb = KnowledgeBase(settings)
    pool = [
        QAPassage(
            id=r["chunk_id"],
            title=r["title"],
            text=r["text"],
            source_path=r["source_path"],
            section=r["section"],
        )
        for r in (kb.random_chunks(200, seed) if kb.count() else [])
    ]
    config = RaftConfig(**policy.raft, seed=seed)
    # Distractors are topped up from the knowledge base and from the split's own passages (an imported set
    # like PubMedQA has no distractors of its own); never from another split, which would leak its gold.
    examples = {
        s: build_raft_examples(split[s], config, random_pool=pool + passage_pool(split[s])) for s in SPLITS
    }
    counts["examples"] = {s: len(v) for s, v in examples.items()}
    digest = content_hash(examples)
    dataset_id = f"ds-{digest[:12]}"
    pii_recognizer = RECOGNIZER_VERSION if policy.pii.get("enabled", True) else None
    with session_scope(settings.db_url) as s:
        existing = s.get(DatasetVersion, dataset_id)
        if existing is not None:
            if pii_recognizer and (existing.pii_recognizer or 1) < pii_recognizer:
                existing.pii_recognizer = pii_recognizer  # the newer recognizers changed nothing in it
            return BuildReport(dataset_id, False, counts)
    folder = settings.data_dir / "datasets" / dataset_id
    folder.mkdir(parents=True, exist_ok=True)
    for split_name, rows in examples.items():
        with (folder / f"{split_name}.jsonl").open("w", encoding="utf-8") as fh:
            for ex in rows:
                fh.write(json.dumps(asdict(ex), ensure_ascii=False) + "\n")
    (folder / "policy.json").write_text(json.dumps(policy.to_dict(), indent=2))
    (folder / "report.json").write_text(json.dumps(counts, indent=2, default=str))
    sources = ["interactions"] * from_interactions + [f"import:{Path(p).name}" for _, p in imports]
    with session_scope(settings.db_url) as s:
        s.add(
            DatasetVersion(
                id=dataset_id,
                name=name,
                content_hash=digest,
                policy=policy.to_dict(),
                source="+".join(sources),
                kb_version=kb.version or None,
                seed=seed,
                path=str(folder),
                counts=counts,
                command=command,
                pii_recognizer=pii_recognizer,
            )
        )
        s.flush()
        for iid in dict.fromkeys(source_ids):
            s.add(DatasetSource(dataset_id=dataset_id, interaction_id=iid))
    return BuildReport(dataset_id, True, counts)


def _home_secret(settings: Settings) -> str:
    """Per-home secret keying the pseudonyms (stable across builds, never leaves the home)."""
    path = settings.data_dir / "pii-secret"
    if not path.exists():
        path.write_text(hashlib.sha256(random.SystemRandom().randbytes(32)).hexdigest())
        path.chmod(0o600)
    return path.read_text().strip()


def list_datasets(db: SessionOrUrl) -> list[DatasetVersion]:
    """Every dataset version, newest first."""
    with session_of(db) as session:
        return list(session.scalars(select(DatasetVersion).order_by(DatasetVersion.created_at.desc())))


def get_dataset(db: SessionOrUrl, dataset_id: str) -> DatasetVersion:
    """A dataset version's record; NotFound names the command that lists them."""
    with session_of(db) as session:
        dv = session.get(DatasetVersion, dataset_id)
    if dv is None:
        raise NotFound(f"No dataset version {dataset_id!r}; see `ragloop dataset list`.")
    return dv


def load_examples(settings: Settings, dataset_id: str, split: str | None = None) -> dict[str, list[dict]]:
    folder = Path(get_dataset(settings.db_url, dataset_id).path)
    out = {}
    for name in [split] if split else SPLITS:
        path = folder / f"{name}.jsonl"
        out[name] = (
            [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            if path.exists()
            else []
        )
    return out


@dataclass
class SplitDiff:
    """How one split changed between two dataset versions, by example id."""

    before: int
    after: int
    added: int
    removed: int


def diff_datasets(settings: Settings, a: str, b: str) -> dict[str, SplitDiff]:
    """What changed from dataset version ``a`` to ``b``, split by split: examples added and removed."""
    ea, eb = load_examples(settings, a), load_examples(settings, b)
    out = {}
    for split in ea:
        ids_a, ids_b = {e["id"] for e in ea[split]}, {e["id"] for e in eb[split]}
        out[split] = SplitDiff(len(ids_a), len(ids_b), len(ids_b - ids_a), len(ids_a - ids_b))
    return out


def rebuild_command(dv: DatasetVersion) -> str:
    return dv.command or f"ragloop dataset build --name {shlex.quote(dv.name)} --seed {dv.seed}"


@dataclass
class OlderPii:
    """A dataset version whose PII was replaced by older recognizers than today's: its examples may still
    hold names the current ones replace (names of other origins, issue 15). Its models, and theirs
    (DPO on SFT), learnt from them."""

    dataset_id: str
    built_with: int
    models: list[str]
    rebuild: str


def older_pii_datasets(db: SessionOrUrl) -> dict[str, OlderPii]:
    """The dataset versions built with PII on and a recognizer version below RECOGNIZER_VERSION (a version
    that recorded none was built with 1), each with the models trained on it and its rebuild command."""
    out: dict[str, OlderPii] = {}
    with session_of(db) as session:
        for dv in session.scalars(select(DatasetVersion)):
            built_with = dv.pii_recognizer or 1
            if (dv.policy or {}).get("pii", {}).get("enabled", True) and built_with < RECOGNIZER_VERSION:
                out[dv.id] = OlderPii(dv.id, built_with, [], rebuild_command(dv))
        if not out:
            return out
        trained = session.execute(
            select(ModelVersion.id, ModelVersion.dataset_id, ModelVersion.parent_id)
        ).all()
    source = {model: dataset for model, dataset, _ in trained if dataset in out}
    while True:  # descendants learnt from the same data
        more = {m: source[p] for m, _, p in trained if p in source and m not in source}
        if not more:
            break
        source.update(more)
    for model, dataset in sorted(source.items()):
        out[dataset].models.append(model)
    return out


def dpo_pairs(examples: list[dict]) -> list[dict]:
    """Preference pairs on the same context: chosen = the target; rejected = the thumbs-down answer when a
    reviewer corrected it, else an answer misled by a distractor."""
    pairs = []
    for ex in examples:
        rejected = (ex.get("meta") or {}).get("rejected") or misled_answer(_example(ex))
        if rejected and rejected.strip() != ex["completion"].strip():
            pairs.append(
                {
                    "prompt": ex["prompt"],
                    "chosen": [{"role": "assistant", "content": ex["completion"]}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
    return pairs


def _example(ex: dict) -> RaftExample:
    data = dict(ex)
    data["passages"] = [QAPassage(**p) for p in ex["passages"]]
    return RaftExample(**data)
