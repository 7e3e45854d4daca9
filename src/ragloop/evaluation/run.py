"""Evaluation runs (stage 8 of the loop): a model version answers a QA set under one retrieval condition;
every answer is scored and stored, so a run can be reopened, compared and sent to expert review.
A run records the process running it; one whose process died (kill -9, OOM, a closed laptop) shows as
``interrupted``, and running the same evaluation again continues it: the stored answers are kept (scored
again by the current scorer) and only the missing questions are generated.

The QA set is any file the importers read (HotpotQA, SQuAD/PolicyQA, PubMedQA, APIBench, generic JSONL) or
the test split of a dataset version. Generation is greedy and batched (left-padded) on the in-process
backend; one-by-one on an OpenAI-compatible one. Each EvalRun records everything that determined its
outputs (``key``), so the robustness report can reuse a run instead of generating it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ragloop.config import Settings
from ragloop.datasets.importers import read_qa_file
from ragloop.datasets.qa import QAItem, QAPassage, passage_pool
from ragloop.errors import NotFound, RagloopError
from ragloop.evaluation.conditions import (
    CONDITIONS,
    EvalCase,
    build_case,
    default_k,
    skip_reason,
)
from ragloop.evaluation.metrics import SCORER_VERSION, aggregate, score_answer
from ragloop.generation.backends import Generation, GenParams
from ragloop.generation.prompts import get_template
from ragloop.proc import Periodic
from ragloop.store import aliases, claims
from ragloop.store.db import session_scope
from ragloop.store.models import DatasetVersion, EvalExample, EvalRun, ModelVersion, utcnow

if TYPE_CHECKING:
    from ragloop.generation.assistant import Assistant

MAX_ID = 128  # EvalExample.example_id
HEARTBEAT_S = 5.0  # a running eval writes EvalRun.heartbeat_at this often, from a thread of its own


@dataclass
class EvalConfig:
    """One evaluation run, as ``ragloop eval`` takes it. Everything is recorded in ``EvalRun.config``.

    Model:
        model: version id or alias (None: ``production``, else the base model).
    Data:
        data: a dataset version id (``ds-...``) or the path of a QA file.
        format: the file's format (``auto`` sniffs it from the content); ignored for a dataset version.
        split: which split of a dataset version to evaluate (its test split by default).
        limit: evaluate a random sample of this many questions; the same ``sample_seed`` draws the same
            questions, so runs of two models on a sample are paired and ``compare`` can use them.
        sample_seed: seed of that sample.
    Context:
        condition: oracle | distractors | no-gold | closed-book | live (see ``conditions``).
        n_distractors: distractors shown under distractors / no-gold (default 4).
        top_k: passages retrieved under ``live`` (default ``[retrieval] top_k``).
        embedder: under ``live``, the embedder version the retriever uses (None: the base embedder), so a
            tuned retriever is measured end to end with any model version.
        seed: seeds each question's distractors and passage order.
    Generation (always greedy):
        max_new_tokens: default ``[generator] max_new_tokens``.
        batch_size: prompts generated together; 1 gives each answer its own unpadded forward passes.
    Resuming:
        resume: continue an interrupted or failed run with the same settings (its answers are kept, the
            missing ones generated) instead of starting a new run.
    """

    data: str
    model: str | None = None
    format: str = "auto"
    split: str = "test"
    limit: int | None = None
    sample_seed: int = 0
    condition: str = "distractors"
    n_distractors: int | None = None
    top_k: int | None = None
    embedder: str | None = None
    seed: int = 0
    max_new_tokens: int | None = None
    batch_size: int = 8
    resume: bool = True


# --- loading the questions ----------------------------------------------------------------------------


@dataclass
class EvalData:
    """The questions of a QA set, where they came from and the content hash that identifies them."""

    label: str  # what EvalRun.dataset records: a dataset version id or an absolute file path
    hash: str
    items: list[QAItem]


def example_to_item(ex: dict) -> QAItem:
    """A dataset version's example (RaftExample as JSON) back into the QA item it was built from: the
    question, all accepted answers, the gold passages it showed and the others as its distractors. When
    the RAFT builder dropped the oracle from this example, the gold is not stored and the item says so."""
    meta = ex.get("meta") or {}
    passages = [QAPassage(**p) for p in ex.get("passages", [])]
    oracle = set(ex.get("oracle_ids") or [])
    answers = meta.get("answers")
    if answers is None:
        answers = [] if ex.get("target") == "abstain" else [ex["answer"]]
    gold = [p for p in passages if p.id in oracle]
    return QAItem(
        id=str(ex["id"]),
        question=ex["question"],
        answers=list(answers),
        gold=gold,
        distractors=[p for p in passages if p.id not in oracle],
        answer_type=meta.get("answer_type", "span"),
        group=ex.get("group", ""),
        meta={**meta, "gold_missing": bool(oracle) and not gold},
    )


def _unique_ids(items: list[QAItem]) -> list[QAItem]:
    """Example ids unique within a run and short enough to store: repeats get #2, #3..; an over-long id
    becomes its hash."""
    seen: dict[str, int] = {}
    for item in items:
        base = (
            item.id
            if len(item.id) <= MAX_ID - 8
            else "h-" + hashlib.sha256(item.id.encode()).hexdigest()[:40]
        )
        seen[base] = seen.get(base, 0) + 1
        item.id = base if seen[base] == 1 else f"{base}#{seen[base]}"
    return items


def load_eval_data(settings: Settings, data: str, fmt: str = "auto", split: str = "test") -> EvalData:
    """The questions of a QA file (read by the importers, so any file of a supported format works) or
    of one split of a dataset version."""
    path = Path(data).expanduser()
    if path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return EvalData(str(path.resolve()), digest, _unique_ids(read_qa_file(path, fmt)))
    with session_scope(settings.db_url) as s:
        dv = s.get(DatasetVersion, data)
        content_hash = dv.content_hash if dv is not None else ""
    if dv is None:
        raise NotFound(
            f"{data!r} is neither a QA file nor a dataset version; pass a file path or an id from "
            "`ragloop dataset list`."
        )
    from ragloop.datasets.build import load_examples

    examples = load_examples(settings, data, split)[split]
    if not examples:
        raise RagloopError(f"Dataset version {data} has no {split!r} examples; try --split val or train.")
    return EvalData(data, content_hash, _unique_ids([example_to_item(ex) for ex in examples]))


def sample_items(items: Sequence[QAItem], limit: int | None, seed: int) -> list[QAItem]:
    """``limit`` items drawn with ``seed`` (in file order), or all of them."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise RagloopError(f"--limit must be at least 1, got {limit}.")
    keep = set(random.Random(seed).sample(range(len(items)), limit))
    return [item for i, item in enumerate(items) if i in keep]


# --- preparing the cases --------------------------------------------------------------------------------


@dataclass
class Prepared:
    """The cases of a run before generation, with what was left out and why."""

    cases: list[EvalCase]
    skipped: dict[str, int]
    n_items: int
    data: EvalData
    k: int | None
    top_k: int | None


def prepare(
    settings: Settings,
    config: EvalConfig,
    *,
    retriever: Any = None,
    kb_version: int | None = None,
    only_ids: set[str] | None = None,
) -> Prepared:
    """Load the QA set, draw the sample and build each question's case (or only those in ``only_ids``,
    which is how review rebuilds the prompts of a stored run without storing every passage text)."""
    if config.condition not in CONDITIONS:
        raise RagloopError(f"Unknown condition {config.condition!r}; use one of {', '.join(CONDITIONS)}.")
    k = default_k(config.condition, config.n_distractors)
    top_k = (config.top_k or settings.retrieval.top_k) if config.condition == "live" else None
    data = load_eval_data(settings, config.data, config.format, config.split)
    pool = passage_pool(data.items)  # the whole set, so a question's distractors do not depend on --limit
    template = get_template(settings.prompt.template)
    items = sample_items(data.items, config.limit, config.sample_seed)
    cases, skipped = [], {}
    for item in items:
        if only_ids is not None and item.id not in only_ids:
            continue
        reason = skip_reason(item, config.condition)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        case = build_case(item, config.condition, k, pool, config.seed, template,
                          retriever=retriever, top_k=top_k, kb_version=kb_version,
                          embedder=config.embedder)  # fmt: skip
        cases.append(case)
    return Prepared(cases, skipped, len(items), data, k, top_k)


def run_key(fields: dict[str, Any]) -> str:
    """Identity of a run's outputs: the same key means the same model answered the same prompts with the
    same generation settings, so a stored run with this key can stand in for a new one."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:32]


def engine_id(settings: Settings) -> str:
    """Which engine generates: outputs of the same version differ between engines and base formats
    (llama.cpp's Q8_0 base is not transformers' fp32), so a run of one never stands in for another."""
    g = settings.generator
    return f"llamacpp/{g.base_format}" if g.backend == "llamacpp" else g.backend


def _key_fields(
    config: EvalConfig, version: ModelVersion, prep: Prepared, template: Any, max_new: int, engine: str
) -> dict:
    fields = {
        "model_version": version.id,
        "dataset": prep.data.label,
        "dataset_hash": prep.data.hash,
        "format": config.format,
        "split": config.split,
        "condition": config.condition,
        "k": prep.k,
        "top_k": prep.top_k,
        "kb_version": prep.cases[0].kb_version if prep.cases else None,
        "limit": config.limit,
        "sample_seed": config.sample_seed,
        "seed": config.seed,
        "max_new_tokens": max_new,
        "template": [template.id, template.version],
    }
    if engine != "transformers":  # the reference engine keeps the keys of runs stored before engines differed
        fields["engine"] = engine
    if config.embedder is not None and config.condition == "live":  # base: the keys of runs stored before
        fields["embedder"] = config.embedder
    return fields


# --- generating -----------------------------------------------------------------------------------------


def generate_all(
    backend: Any,
    prompts: Sequence[list[dict]],
    params: GenParams,
    adapter: str | None,
    batch_size: int,
    on_batch: Callable[[list[int], list[Generation]], None],
) -> None:
    """Generate for every prompt, ``batch_size`` at a time, calling ``on_batch(indices, generations)``
    after each batch. Prompts are grouped by length, so a batch pads little; a backend without
    ``generate_batch`` (OpenAI-compatible) answers one by one."""
    order = sorted(range(len(prompts)), key=lambda i: sum(len(m["content"]) for m in prompts[i]))
    batched = batch_size > 1 and hasattr(backend, "generate_batch")
    step = batch_size if batched else 1
    for start in range(0, len(order), step):
        indices = order[start : start + step]
        if batched:
            gens = backend.generate_batch([prompts[i] for i in indices], params, adapter)
        else:
            gens = [backend.generate(prompts[i], params, adapter) for i in indices]
        on_batch(indices, gens)


def run_eval(
    settings: Settings,
    config: EvalConfig,
    *,
    assistant: Assistant | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalRun:
    """Evaluate one model version under one condition; returns the stored, finished EvalRun.

    The run row is committed before generation and each batch of examples as it finishes, so an
    interrupted run is visible (status ``running`` or ``failed``) with what it had scored."""
    from ragloop.generation.assistant import Assistant

    if config.batch_size < 1:
        raise RagloopError(f"--batch-size must be at least 1, got {config.batch_size}.")
    assistant = assistant or Assistant(settings)
    with session_scope(settings.db_url) as s:
        version, alias = aliases.resolve(s, config.model)
    live = config.condition == "live"
    kb_version = (assistant.kb.version or None) if live else None
    if live and kb_version is None:
        raise RagloopError("The knowledge base is empty: ingest documents first, or use another --condition.")
    if kb_version is not None:
        assistant.kb.tag(kb_version)  # review rebuilds these prompts at this version: keep it from compaction
    prep = prepare(settings, config, retriever=assistant.retriever if live else None, kb_version=kb_version)
    if not prep.cases:
        raise RagloopError(
            f"No question of {config.data} can be evaluated under {config.condition!r} "
            f"(left out: {prep.skipped}); try --condition no-gold or closed-book."
        )
    backend, adapter = assistant.backend_for(version)
    template = get_template(settings.prompt.template)
    max_new = config.max_new_tokens or settings.generator.max_new_tokens
    params = GenParams(max_new_tokens=max_new, temperature=0.0, seed=0)
    key_fields = _key_fields(config, version, prep, template, max_new, engine_id(settings))
    run_config = {
        **asdict(config),
        "data": prep.data.label,  # absolute: review rebuilds the prompts from another working directory
        "model_alias": alias,
        "n_distractors": prep.k,
        "top_k": prep.top_k,
        "kb_version": key_fields["kb_version"],
        "template": {"id": template.id, "version": template.version},
        "gen_params": params.to_dict(),
        "engine": engine_id(settings),
        "scorer": SCORER_VERSION,
        "n_items": len(prep.data.items),
        "n_sampled": prep.n_items,
        "skipped": prep.skipped,
        "key": run_key(key_fields),
        "prompts_sha256": prompts_digest(prep.cases),
    }
    rows: list[dict] = []
    todo = list(range(len(prep.cases)))
    earlier = 0.0
    unfinished = _unfinished_run(settings, run_config["key"]) if config.resume else None
    claimed = _take_over(settings, unfinished, prep.cases, run_config) if unfinished is not None else None
    if claimed is not None:  # keep what it answered; generate only the rest
        run, kept = claimed
        for i, ex in kept.items():
            case = prep.cases[i]
            scored = _score_case(case, ex.output)
            scores = {**(ex.scores or {}), **scored.scores}
            rows.append({"scores": scores, "prediction": scored.prediction, "answers": case.item.answers,
                         "latency_ms": ex.latency_ms})  # fmt: skip
        todo = [i for i in todo if i not in kept]
        earlier = unfinished.wall_s or 0.0
        if progress:
            progress(len(rows), len(prep.cases))
    else:
        with session_scope(settings.db_url) as s:
            run = EvalRun(model_version=version.id, dataset=prep.data.label, dataset_hash=prep.data.hash,
                          condition=config.condition, n_distractors=prep.k, config=run_config,
                          n_examples=len(prep.cases), status="running", heartbeat_at=utcnow(),
                          owner=claims.me())  # created claimed by this process  # fmt: skip
            s.add(run)
    started = time.perf_counter()

    def on_batch(indices: list[int], gens: list[Generation]) -> None:
        records = []
        for i, gen in zip(indices, gens, strict=True):
            case = prep.cases[i]
            scored = _score_case(case, gen.text)
            scored.scores.update(prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                                 finish_reason=gen.finish_reason, **case.scores)  # fmt: skip
            # A batch's answers arrive together: each is charged an equal share of the batch's time.
            latency = gen.generate_s * 1000 / len(gens)
            rows.append({"scores": scored.scores, "prediction": scored.prediction, "answers": case.item.answers,
                         "latency_ms": latency})  # fmt: skip
            records.append(EvalExample(
                run_id=run.id, example_id=case.item.id, question=case.item.question, answers=case.item.answers,
                passage_ids=[p.id for p in case.passages], gold_ids=case.gold_ids, prompt_sha256=case.prompt_sha256,
                output=gen.text, prediction=scored.prediction, scores=scored.scores, latency_ms=latency,
            ))  # fmt: skip
        with session_scope(settings.db_url) as s:
            s.add_all(records)
        if progress:
            progress(len(rows), len(prep.cases))

    try:
        prompts = [prep.cases[i].prompt for i in todo]
        with _heartbeat(settings, run.id):
            generate_all(backend, prompts, params, adapter, config.batch_size,
                         lambda idx, gens: on_batch([todo[i] for i in idx], gens))  # fmt: skip
    except BaseException as exc:
        # Ctrl-C / SIGTERM: the work is fine, only stopped; anything else is a failure to look at.
        stopped = isinstance(exc, KeyboardInterrupt | SystemExit)
        with session_scope(settings.db_url) as s:
            stored = s.get(EvalRun, run.id).config
            claims.release(s, EvalRun, run.id, "interrupted" if stopped else "failed",
                           {"config": {**stored, "error": f"{type(exc).__name__}: {exc}"[:2000]},
                            "wall_s": earlier + time.perf_counter() - started})  # fmt: skip
        raise
    wall = earlier + time.perf_counter() - started
    metrics = aggregate(rows)
    metrics["examples_per_s"] = len(rows) / wall if wall > 0 else None
    with session_scope(settings.db_url) as s:
        # Released only if still ours: a run taken over meanwhile (a long silence) is its new owner's.
        finished = claims.release(s, EvalRun, run.id, "done", {"metrics": metrics, "wall_s": wall})
        done = s.get(EvalRun, run.id)
        if finished:
            entry = {"run_id": run.id, "data": prep.data.label, "condition": config.condition, "k": prep.k,
                     "metrics": metrics}  # fmt: skip
            _add_to_version(s, version.id, entry)
        s.flush()
        s.expunge(done)
    return done


def _add_to_version(s: Any, version_id: str, entry: dict[str, Any]) -> None:
    """Results travel with the version (``ragloop models show`` lists them): append ``entry`` to its evals."""
    mv = s.get(ModelVersion, version_id)
    if mv is not None:
        mv.meta = {**(mv.meta or {}), "evals": [*(mv.meta or {}).get("evals", []), entry]}


def _score_case(case: EvalCase, output: str) -> Any:
    """Every score of one output against its case (new answers and continued runs' stored ones alike)."""
    return score_answer(output, case.item.answers, case.item.answer_type, [p.id for p in case.passages],
                        [p.text for p in case.passages], case.gold_ids)  # fmt: skip


def _unfinished_run(settings: Settings, key: str) -> EvalRun | None:
    """The newest run with this key that stopped before the end and nobody is running now."""
    mark_interrupted(settings)
    with session_scope(settings.db_url) as s:
        for run in s.scalars(
            select(EvalRun)
            .where(EvalRun.status.in_(("interrupted", "failed")))
            .order_by(EvalRun.created_at.desc())
        ):
            if (run.config or {}).get("key") == key:
                s.expunge(run)
                return run
    return None


def _take_over(
    settings: Settings, run: EvalRun, cases: Sequence[EvalCase], run_config: dict
) -> tuple[EvalRun, dict[int, EvalExample]] | None:
    """Claim an unfinished run for this process; return it and its stored answers by case index, or None
    when another process claimed it first (the caller then starts a run of its own).

    The claim is one conditional UPDATE (``… WHERE status IN ('interrupted', 'failed')``), committed before
    anything else: of two processes continuing the same run at once, exactly one sees its row change. An
    answer is kept only if its prompt is byte for byte the prompt this run would show (same key makes that
    the rule; the hash check makes it certain); any other stored answer is deleted and asked again."""
    resumed = (run.config or {}).get("resumed", 0) + 1
    with session_scope(settings.db_url) as s:
        config = {**run_config, "resumed": resumed}
        if not claims.claim(
            s, EvalRun, run.id, from_status=("interrupted", "failed"), values={"config": config}
        ):
            return None
    index = {c.item.id: i for i, c in enumerate(cases)}
    kept: dict[int, EvalExample] = {}
    with session_scope(settings.db_url) as s:
        row = s.get(EvalRun, run.id)
        for ex in s.scalars(select(EvalExample).where(EvalExample.run_id == run.id)):
            i = index.get(ex.example_id)
            if i is not None and ex.prompt_sha256 == cases[i].prompt_sha256 and i not in kept:
                kept[i] = ex
            else:
                s.delete(ex)
        s.flush()
        s.expunge_all()
    return row, kept


def _heartbeat(settings: Settings, run_id: str) -> Periodic:
    """Write the run's ``heartbeat_at`` every ``HEARTBEAT_S`` while the ``with`` block runs. It writes only
    while the run is still ``running``, so it never revives a run another process has marked interrupted."""

    def beat() -> None:
        with session_scope(settings.db_url) as s:
            claims.heartbeat(s, EvalRun, run_id)

    return Periodic(HEARTBEAT_S, beat, name=f"eval-heartbeat-{run_id[:8]}")


def mark_interrupted(settings: Settings) -> int:
    """Mark ``interrupted`` every ``running`` run whose process is certainly gone (``proc.owner_gone``: on
    this host a dead pid or a reboot since; on another host a heartbeat silent for ``REMOTE_STALE_S``).
    Returns how many were marked.

    Each mark is fenced on the heartbeat this call saw (``claims.interrupt_dead``): if another process
    marked and claimed the run in between (which writes a new heartbeat), the stale mark changes nothing
    instead of taking the run from under its new owner."""
    with session_scope(settings.db_url) as s:
        return len(claims.interrupt_dead(s, EvalRun))


def prompts_digest(cases: Sequence[EvalCase]) -> str:
    """One hash of every prompt a run shows, in order: two runs with the same digest asked the same
    questions in the same words with the same passages, whatever code built the prompts."""
    return hashlib.sha256("".join(c.prompt_sha256 for c in cases).encode()).hexdigest()


def find_reusable_run(settings: Settings, key: str, prompts_sha256: str | None = None) -> EvalRun | None:
    """The newest finished run with this key (and, when given, these prompts), if any. A run stored before
    runs recorded their prompts' digest is matched on the key alone."""
    with session_scope(settings.db_url) as s:
        for run in s.scalars(
            select(EvalRun).where(EvalRun.status == "done").order_by(EvalRun.created_at.desc())
        ):
            stored = run.config or {}
            if stored.get("key") != key:
                continue
            if prompts_sha256 and stored.get("prompts_sha256") not in (None, prompts_sha256):
                continue
            s.expunge(run)
            return run
    return None


def reusable_run(settings: Settings, config: EvalConfig) -> EvalRun | None:
    """A finished run that ``config`` would reproduce, found without generating; never for ``live``,
    whose prompts depend on the knowledge base as it is at run time. The prompts are built (cheap, no
    model) and must be the ones the stored run showed, so a change in how prompts are built (template,
    question wording, distractor choice) is never answered by a stale run."""
    if config.condition == "live":
        return None
    prep = prepare(settings, config)
    return find_reusable_run(settings, planned_key(settings, config, prep=prep), prompts_digest(prep.cases))


def planned_key(
    settings: Settings, config: EvalConfig, kb_version: int | None = None, prep: Prepared | None = None
) -> str:
    """The key a run of ``config`` would get, computed without generating (for reuse). ``live`` runs are
    keyed by the KB version, so they are only reused while the knowledge base is unchanged."""
    with session_scope(settings.db_url) as s:
        version, _ = aliases.resolve(s, config.model)
        s.expunge(version)
    k = default_k(config.condition, config.n_distractors)
    top_k = (config.top_k or settings.retrieval.top_k) if config.condition == "live" else None
    data = prep.data if prep else load_eval_data(settings, config.data, config.format, config.split)
    template = get_template(settings.prompt.template)
    fields = _key_fields(
        config, version, Prepared([], {}, 0, data, k, top_k), template,
        config.max_new_tokens or settings.generator.max_new_tokens, engine_id(settings),
    )  # fmt: skip
    fields["kb_version"] = kb_version if config.condition == "live" else None
    return run_key(fields)


# --- scoring stored outputs again ---------------------------------------------------------------------------


def config_of(run_config: dict[str, Any]) -> EvalConfig:
    """The EvalConfig a stored run was made with (its ``config`` holds more keys than the dataclass)."""
    names = {f.name for f in dataclasses.fields(EvalConfig)}
    return EvalConfig(**{k: v for k, v in run_config.items() if k in names})


def rebuild_cases(settings: Settings, run: EvalRun, examples: Sequence[EvalExample]) -> dict[str, EvalCase]:
    """The cases (question, passages shown, prompt) of a stored run's examples, rebuilt byte for byte from
    its data and settings; refused when the data, template or knowledge base changed since."""
    retriever = None
    if run.condition == "live":
        from ragloop.retrieval.search import Retriever

        retriever = Retriever(settings)
    prep = prepare(settings, config_of(run.config), retriever=retriever, kb_version=run.config.get("kb_version"),
                   only_ids={e.example_id for e in examples})  # fmt: skip
    if prep.data.hash != run.dataset_hash:
        raise RagloopError(f"{run.dataset} changed since run {run.id} (content hash differs): the passages shown "
                           "cannot be rebuilt. Re-run the evaluation on the current file.")  # fmt: skip
    cases = {c.item.id: c for c in prep.cases}
    for e in examples:
        case = cases.get(e.example_id)
        if case is None or case.prompt_sha256 != e.prompt_sha256:
            raise RagloopError(f"The prompt of {e.example_id} in run {run.id} could not be rebuilt byte for byte "
                               "(data, template or knowledge base changed); re-run the evaluation.")  # fmt: skip
    return cases


def rescore_run(settings: Settings, run_id: str) -> EvalRun:
    """Score a finished run's stored outputs again with the current scorer, without generating: a new run
    (``config.rescored_from``) with the same answers and new scores; the old run stays, so the change of
    metric is itself comparable (``ragloop eval compare OLD NEW``). The passages shown are rebuilt from the
    run's data, and must hash to the prompts it stored."""
    run = get_run(settings, run_id)
    if run.status != "done":
        raise RagloopError(f"Eval run {run.id} is {run.status}; only finished runs can be scored again.")
    examples = run_examples(settings, run.id)
    cases = rebuild_cases(settings, run, examples)
    rows, records = [], []
    for e in examples:
        case = cases[e.example_id]
        scored = _score_case(case, e.output)
        scores = {**(e.scores or {}), **scored.scores}  # keeps token counts and finish reasons
        rows.append({"scores": scores, "prediction": scored.prediction, "answers": e.answers,
                     "latency_ms": e.latency_ms})  # fmt: skip
        records.append((e, scored.prediction, scores))
    metrics = aggregate(rows)
    metrics["examples_per_s"] = (run.metrics or {}).get("examples_per_s")
    config = {**(run.config or {}), "rescored_from": run.id, "scorer": SCORER_VERSION}
    with session_scope(settings.db_url) as s:
        new = EvalRun(model_version=run.model_version, dataset=run.dataset, dataset_hash=run.dataset_hash,
                      condition=run.condition, n_distractors=run.n_distractors, config=config, metrics=metrics,
                      n_examples=len(examples), status="done", wall_s=run.wall_s)  # fmt: skip
        s.add(new)
        s.flush()
        s.add_all(
            EvalExample(run_id=new.id, example_id=e.example_id, question=e.question, answers=e.answers,
                        passage_ids=e.passage_ids, gold_ids=e.gold_ids, prompt_sha256=e.prompt_sha256,
                        output=e.output, prediction=prediction, scores=scores, latency_ms=e.latency_ms)
            for e, prediction, scores in records
        )  # fmt: skip
        entry = {"run_id": new.id, "data": run.dataset, "condition": run.condition, "k": run.n_distractors,
                 "metrics": metrics, "rescored_from": run.id}  # fmt: skip
        _add_to_version(s, run.model_version, entry)
        s.flush()
        s.expunge(new)
    return new


# --- reading runs back ------------------------------------------------------------------------------------


def get_run(settings: Settings, run_id: str) -> EvalRun:
    """A stored run by id or unique id prefix."""
    mark_interrupted(settings)
    with session_scope(settings.db_url) as s:
        run = s.get(EvalRun, run_id)
        if run is None:
            matches = list(s.scalars(select(EvalRun).where(EvalRun.id.startswith(run_id)).limit(2)))
            if len(matches) != 1:
                what = "is ambiguous" if matches else "does not exist"
                raise NotFound(f"Eval run {run_id!r} {what}; see `ragloop eval list`.")
            run = matches[0]
        s.expunge(run)
        return run


def list_runs(settings: Settings, model: str | None = None, limit: int = 50) -> list[EvalRun]:
    """Runs, newest first; ``model`` (a version or alias) keeps only that version's."""
    mark_interrupted(settings)
    with session_scope(settings.db_url) as s:
        q = select(EvalRun).order_by(EvalRun.created_at.desc()).limit(limit)
        if model:
            version, _ = aliases.resolve(s, model)
            q = q.where(EvalRun.model_version == version.id)
        runs = list(s.scalars(q))
        s.expunge_all()
        return runs


def run_examples(
    settings: Settings, run_id: str, *, wrong: bool = False, limit: int | None = None
) -> list[EvalExample]:
    """A run's examples in storage order; ``wrong`` keeps those scored incorrect."""
    run = get_run(settings, run_id)
    with session_scope(settings.db_url) as s:
        rows = list(
            s.scalars(select(EvalExample).where(EvalExample.run_id == run.id).order_by(EvalExample.id))
        )
        s.expunge_all()
    if wrong:
        rows = [r for r in rows if not (r.scores or {}).get("correct")]
    return rows[:limit] if limit is not None else rows
