"""Read public QA datasets into ``QAItem``s: HotpotQA (distractor setting), SQuAD v1.1/v2 (PolicyQA),
PubMedQA, Gorilla APIBench and a generic JSONL for anything else. docs/data-formats.md describes each one.

Every reader accepts a JSON document or JSON lines (upstream files are not consistent about which), tolerates
missing optional fields and extra ones, and stops at the first malformed record, naming it. Passages get
the id the format gives, else a hash of title and text, so ids are stable across runs.
"""

from __future__ import annotations

import ast
import functools
import gzip
import json
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ragloop.datasets.answers import LABELS
from ragloop.datasets.qa import ANSWER_TYPES, QAItem, QAPassage, passage_id
from ragloop.errors import RagloopError
from ragloop.generation.citations import WORD

FORMATS = ("hotpotqa", "squad", "pubmedqa", "apibench", "generic")
MAX_DATASET_DISTRACTORS = 8  # same-document hard negatives kept per item (HotpotQA ships 8)

Entries = list[tuple[str, Any]]  # (where the record is, for error messages; the record)


class _Malformed(Exception):
    """A record is missing a field or has one of the wrong shape; read_qa_file adds file and position."""


# --- loading and sniffing -----------------------------------------------------------------------------


def _load(path: Path) -> tuple[Any, bool]:
    """The parsed JSON document, or the list of JSON lines; and whether the file was JSON lines."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise RagloopError(f"Cannot read QA file {path}: {e}") from None
    try:
        data = json.loads(text)
        # One object on one line is a one-record JSON-lines file: errors should then say "line 1".
        return data, isinstance(data, dict) and "\n" not in text.strip()
    except json.JSONDecodeError:
        pass
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise RagloopError(
                    f"{path}: line {lineno} is not valid JSON ({e.msg}); a QA file is one JSON document or "
                    "JSON lines (one object per line)."
                ) from None
    return records, True


def _entries(data: Any, jsonl: bool) -> Entries:
    """Records with their position: "line 7" in JSON lines, "record 7" (1-based) in a JSON array."""
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        return [("the top level", data)]
    word = "line" if jsonl else "record"
    return [(f"{word} {i}", r) for i, r in enumerate(data, start=1)]


def _record_format(r: Any) -> str | None:
    if not isinstance(r, dict):
        return None
    if "supporting_facts" in r and "context" in r:
        return "hotpotqa"
    if "api_call" in r and ("code" in r or "api_data" in r):
        return "apibench"
    if ("QUESTION" in r and "CONTEXTS" in r) or ("final_decision" in r and ("context" in r or "pubid" in r)):
        return "pubmedqa"
    if "question" in r and "context" in r and "answers" in r:
        return "squad"  # flattened SQuAD (Hugging Face `squad` rows)
    if "question" in r and ("answers" in r or "answer" in r):
        return "generic"
    return None


def detect_format(data: Any) -> str | None:
    """The format of parsed file content, judged from its structure (never from the file name)."""
    if isinstance(data, dict):
        if isinstance(data.get("data"), list) and any(
            isinstance(d, dict) and "paragraphs" in d for d in data["data"]
        ):
            return "squad"
        values = list(data.values())[:5]
        if values and all(isinstance(v, dict) for v in values) and _record_format(values[0]) == "pubmedqa":
            return "pubmedqa"
        return _record_format(data)
    if isinstance(data, list):
        for r in data[:20]:
            fmt = _record_format(r)
            if fmt:
                return fmt
    return None


def read_qa_file(path: Path | str, fmt: str = "auto", *, api_docs: Path | str | None = None) -> list[QAItem]:
    """Read one QA file. ``fmt`` is one of FORMATS or "auto" (sniffed from the content).

    ``api_docs`` (APIBench only) is the API corpus (``<hub>_api.jsonl``); by default it is looked for next
    to the file and in ``../api/`` as in the Gorilla repository. It supplies same-domain distractors and
    the gold doc when a record carries no ``api_data``.
    """
    path = Path(path)
    if not path.is_file():
        raise RagloopError(f"QA file {path} does not exist.")
    data, jsonl = _load(path)
    if fmt == "auto":
        fmt = detect_format(data) or ""
        if not fmt:
            raise RagloopError(
                f"Cannot tell the format of {path}: supported formats are {', '.join(FORMATS)} "
                "(see docs/data-formats.md). Pass the format explicitly, or convert the file to the generic JSONL."
            )
    if fmt not in FORMATS:
        raise RagloopError(f"Unknown QA format {fmt!r}; supported formats: {', '.join(FORMATS)}.")
    try:
        if fmt == "apibench":
            items = _read_apibench(data, jsonl, path, Path(api_docs) if api_docs else None)
        else:
            items = READERS[fmt](data, jsonl)
    except _Malformed as e:
        raise RagloopError(f"{path}: {e} (read as {fmt}; see docs/data-formats.md)") from None
    if not items:
        raise RagloopError(f"{path}: no {fmt} records found.")
    return items


def _each(entries: Entries, parse: Callable[[Any], QAItem]) -> list[QAItem]:
    """Parse every record, turning any shape error into one message that names the record."""
    items = []
    for where, r in entries:
        try:
            if not isinstance(r, dict):
                raise _Malformed(f"expected a JSON object, got {type(r).__name__}")
            items.append(parse(r))
        except _Malformed as e:
            raise _Malformed(f"{where}{_id_hint(r)} is malformed: {e}") from None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            raise _Malformed(f"{where}{_id_hint(r)} is malformed: {detail}") from None
    return items


def _id_hint(r: Any) -> str:
    if isinstance(r, dict):
        for key in ("id", "_id", "pubid", "question_id"):
            if key in r:
                return f" (id {r[key]!r})"
    return ""


# --- small helpers ----------------------------------------------------------------------------------


def _text(r: dict, *keys: str, required: bool = True) -> str:
    """The first present string field among ``keys``."""
    for key in keys:
        value = r.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if value is not None and not isinstance(value, str):
            raise _Malformed(f"field {key!r} should be a string, got {type(value).__name__}")
    if required:
        raise _Malformed(f"missing field {keys[0]!r}")
    return ""


def _unique(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        v = " ".join(str(v).split())
        if v and v not in out:
            out.append(v)
    return out


def _question_id(r: dict, question: str, *keys: str) -> str:
    for key in keys:
        if r.get(key) not in (None, ""):
            return str(r[key])
    return "q-" + passage_id("", question)[2:]


@functools.lru_cache(maxsize=65536)
def _words(text: str) -> frozenset[str]:
    # Cached: in SQuAD every paragraph is scored against each question of its document.
    return frozenset(w.lower() for w in WORD.findall(text) if len(w) > 2)


def _closest(
    question: str, candidates: list[QAPassage], exclude: str = "", k: int = MAX_DATASET_DISTRACTORS
) -> list[QAPassage]:
    """The ``k`` candidates sharing most words with the question: hard negatives, chosen deterministically
    (ties keep the input order). Passages containing ``exclude`` (the answer) are skipped: a passage
    that holds the answer is not a distractor."""
    q = _words(question)
    # Only a substantial answer (3+ words) identifies a passage as answer-bearing; "information" does not.
    needle = " ".join(exclude.lower().split()) if len(exclude.split()) >= 3 else ""
    scored = []
    for i, p in enumerate(candidates):
        if needle and needle in " ".join(p.text.lower().split()):
            continue
        words = _words(p.text)
        scored.append((-len(words & q) / math.sqrt(len(words) or 1), i, p))
    return [p for _, _, p in sorted(scored, key=lambda t: t[:2])[:k]]


# --- HotpotQA ---------------------------------------------------------------------------------------


def _hotpot_paragraphs(context: Any) -> list[tuple[str, list[str]]]:
    """[(title, sentences)] from the original [[title, [sentences]]] or the Hugging Face
    {"title": [...], "sentences": [[...]]} layout."""
    if isinstance(context, dict):
        titles, sentences = context.get("title"), context.get("sentences")
        if isinstance(titles, list) and isinstance(sentences, list) and len(titles) == len(sentences):
            return [(str(t), list(s)) for t, s in zip(titles, sentences, strict=True)]
    elif isinstance(context, list) and all(isinstance(c, list) and len(c) == 2 for c in context):
        return [(str(t), list(s)) for t, s in context]
    raise _Malformed(
        '\'context\' should be [[title, [sentences]], ...] or {"title": [...], "sentences": [[...], ...]}'
    )


def _hotpot_facts(facts: Any) -> list[tuple[str, int]]:
    if facts is None:
        return []
    if isinstance(facts, dict):
        return [(str(t), int(i)) for t, i in zip(facts["title"], facts["sent_id"], strict=True)]
    return [(str(t), int(i)) for t, i in facts]


def _join_sentences(sentences: list[str]) -> str:
    # HotpotQA keeps each sentence's leading space; add one only where a sentence has none.
    parts = [s if i == 0 or s[:1].isspace() else " " + s for i, s in enumerate(sentences) if s]
    return "".join(parts).strip()


def _hotpot_item(r: dict) -> QAItem:
    question = _text(r, "question")
    answers = _answers(r)
    facts = _hotpot_facts(r.get("supporting_facts"))
    gold_titles = _unique(t for t, _ in facts)
    gold, distractors, supporting = [], [], {}
    seen: set[str] = set()
    for title, sentences in _hotpot_paragraphs(r["context"]):
        text = _join_sentences([str(s) for s in sentences])
        p = QAPassage(id=passage_id(title, text), title=title, text=text)
        if not text or p.id in seen:
            continue
        seen.add(p.id)
        if title in gold_titles:
            gold.append(p)
            sents = [sentences[i].strip() for t, i in facts if t == title and 0 <= i < len(sentences)]
            supporting[p.id] = [s for s in sents if s]
        else:
            distractors.append(p)
    label = answers[0].lower() in ("yes", "no")
    return QAItem(
        id=_question_id(r, question, "id", "_id"),
        question=question,
        answers=[answers[0].lower()] if label else answers,
        gold=gold,
        distractors=distractors,
        answer_type="label" if label else "span",
        group="|".join(sorted(gold_titles)),
        meta={
            "source": "hotpotqa",
            "type": r.get("type", ""),
            "level": r.get("level", ""),
            "supporting_sentences": supporting,  # the annotated evidence: what a reasoning target quotes
        },
    )


def _answers(r: dict) -> list[str]:
    """ "answers" (list of strings or of {"text": ...}, or SQuAD's {"text": [...]}) or "answer"."""
    raw = r.get("answers", r.get("answer"))
    if isinstance(raw, dict):
        raw = raw.get("text", [])
    if isinstance(raw, str | int | float) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list):
        raise _Malformed("missing field 'answer' (or 'answers')")
    answers = _unique(a.get("text", "") if isinstance(a, dict) else a for a in raw)
    if not answers:
        raise _Malformed("has no answer")
    return answers


# --- SQuAD (PolicyQA) -------------------------------------------------------------------------------


def _read_squad(data: Any, jsonl: bool) -> list[QAItem]:
    """Nested SQuAD ({"data": [{"title", "paragraphs": [{"context", "qas"}]}]}) or flattened rows
    ({"title", "context", "question", "answers"}); one document = one title."""
    # Paragraphs per document, in document order: the pool the distractors come from (a paragraph
    # without questions is still a distractor).
    paragraphs: dict[str, list[QAPassage]] = {}
    seen: set[str] = set()

    def add_paragraph(title: str, context: Any) -> None:
        if isinstance(context, str) and context.strip():
            p = QAPassage(id=passage_id(title, context.strip()), title=title, text=context.strip())
            if p.id not in seen:
                seen.add(p.id)
                paragraphs.setdefault(title, []).append(p)

    rows: Entries = []
    if isinstance(data, dict) and "data" in data:
        docs = data["data"]
        if not isinstance(docs, list):
            raise _Malformed("'data' should be a list of documents")
        for d_i, doc in enumerate(docs, start=1):
            if not isinstance(doc, dict) or not isinstance(doc.get("paragraphs"), list):
                raise _Malformed(f"document {d_i} has no 'paragraphs' list")
            title = str(doc.get("title", f"document {d_i}"))
            for p_i, para in enumerate(doc["paragraphs"], start=1):
                if not isinstance(para, dict) or not isinstance(para.get("qas"), list):
                    raise _Malformed(f"document {d_i} ({title}) paragraph {p_i} has no 'context' and 'qas'")
                add_paragraph(title, para.get("context"))
                for q_i, qa in enumerate(para["qas"], start=1):
                    where = f"document {d_i} ({title}) paragraph {p_i} question {q_i}"
                    if not isinstance(qa, dict):
                        raise _Malformed(f"{where} is not a JSON object")
                    rows.append((where, {**qa, "title": title, "context": para.get("context")}))
    else:
        rows = _entries(data, jsonl)
        for _, r in rows:
            if isinstance(r, dict):
                add_paragraph(str(r.get("title", "")), r.get("context"))

    def parse(r: dict) -> QAItem:
        question, title, text = _text(r, "question"), str(r.get("title", "")), _text(r, "context")
        gold = QAPassage(id=passage_id(title, text), title=title, text=text)
        impossible = bool(r.get("is_impossible")) or r.get("answers") in (
            [],
            {"text": [], "answer_start": []},
        )
        answers = [] if impossible else _answers(r)
        others = [p for p in paragraphs.get(title, []) if p.text != text]
        distractors = _closest(question, others, exclude=answers[0] if answers else "")
        return QAItem(
            id=_question_id(r, question, "id"),
            question=question,
            answers=answers,
            # A SQuAD v2 unanswerable question: its paragraph does not hold the answer, so it is a
            # distractor and the item has no oracle (the RAFT builder then targets an abstention).
            gold=[] if impossible else [gold],
            distractors=[gold, *distractors] if impossible else distractors,
            answer_type="span",
            group=title,
            meta={"source": "squad", "qa_type": r.get("type", ""), "unanswerable": impossible},
        )

    return _each(rows, parse)


# --- PubMedQA ---------------------------------------------------------------------------------------


def _read_pubmedqa(data: Any, jsonl: bool) -> list[QAItem]:
    """The original {pmid: {QUESTION, CONTEXTS, LABELS, final_decision, LONG_ANSWER}} file, or rows in the
    Hugging Face layout ({pubid, question, context: {contexts, labels}, long_answer, final_decision})."""
    if (
        isinstance(data, dict)
        and data
        and _record_format(data) is None
        and all(isinstance(v, dict) for v in data.values())
    ):
        entries: Entries = [
            (f"entry {k!r}", {"pubid": k, **v} if isinstance(v, dict) else v) for k, v in data.items()
        ]
    else:
        entries = _entries(data, jsonl)

    def parse(r: dict) -> QAItem:
        pmid = str(r.get("pubid", r.get("PMID", r.get("id", ""))))
        question = _text(r, "QUESTION", "question")
        ctx = r.get("context") if isinstance(r.get("context"), dict) else {}
        contexts = r.get("CONTEXTS", ctx.get("contexts"))
        labels = r.get("LABELS", ctx.get("labels")) or []
        if not isinstance(contexts, list) or not contexts:
            raise _Malformed("missing field 'CONTEXTS' (a list of abstract sections)")
        decision = _text(r, "final_decision").lower()
        if decision not in LABELS:
            raise _Malformed(f"final_decision is {decision!r}, expected one of {', '.join(LABELS)}")
        title = f"PMID {pmid}" if pmid else "PubMed abstract"
        gold: list[QAPassage] = []
        for i, c in enumerate(contexts):
            text = str(c).strip()
            p = QAPassage(
                id=passage_id(title, text),
                title=title,
                text=text,
                section=str(labels[i]) if i < len(labels) else "",
            )
            if text and p.id not in {g.id for g in gold}:
                gold.append(p)
        return QAItem(
            id=pmid or _question_id(r, question),
            question=question,
            answers=[decision],
            gold=gold,
            distractors=[],  # the dataset gives none: contexts of other abstracts come from the random pool
            answer_type="label",
            reasoning=_text(r, "LONG_ANSWER", "long_answer", required=False) or None,
            group=pmid,
            meta={
                "source": "pubmedqa",
                "year": r.get("YEAR", ""),
                "meshes": r.get("MESHES", ctx.get("meshes", [])),
                "reasoning_required_pred": r.get("reasoning_required_pred", ""),
            },
        )

    return _each(entries, parse)


# --- Gorilla APIBench -------------------------------------------------------------------------------

# Field names inside a record's "code" string, whichever of Gorilla's layouts it uses:
# "{'Instruction': ..., 'Output': {'domain': ..., 'api_call': ..., 'explanation': ..., 'code': ...}}"
# or "###Instruction: ...\n###Output: <<<domain>>>: ..., <<<api_call>>>: ..., <<<code>>>: ...".
_GORILLA_FIELD = re.compile(
    r"(?:###\s*|<<<|['\"])(Instruction|Output|domain|api_call|api_provider|explanation|code)(?:>>>|['\"])?\s*:\s*"
)
_API_DOC_ORDER = (
    "api_name",
    "domain",
    "framework",
    "functionality",
    "api_call",
    "api_arguments",
    "python_environment_requirements",
    "example_code",
    "performance",
    "description",
)


def _gorilla_value(raw: str) -> str:
    value = raw.strip().rstrip(",").strip().rstrip("}").strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        try:
            return str(ast.literal_eval(value.replace("\n", "\\n"))).strip()
        except (SyntaxError, ValueError):
            return value[1:-1].strip()
    return value


def parse_gorilla_code(code: str) -> dict[str, str]:
    """The fields of a Gorilla "code" string (Instruction, domain, api_call, explanation, code...)."""
    marks = list(_GORILLA_FIELD.finditer(code))
    fields: dict[str, str] = {}
    for i, m in enumerate(marks):
        key = m.group(1)
        if key in fields:
            continue
        if key == "code":  # the last field; anything that looks like a field name inside it is code
            fields[key] = _gorilla_value(code[m.end() :])
            break
        end = marks[i + 1].start() if i + 1 < len(marks) else len(code)
        fields[key] = _gorilla_value(code[m.end() : end])
    fields.pop("Output", None)
    return fields


def _api_field(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ("\n" if key == "example_code" else ", ").join(v.strip() for v in value)
    return json.dumps(value, ensure_ascii=False)


def api_doc_passage(doc: dict) -> QAPassage:
    """An API document as a passage: one "field: value" line per field, the api_call line verbatim so a
    reasoning target can quote it."""
    keys = [k for k in _API_DOC_ORDER if k in doc] + sorted(k for k in doc if k not in _API_DOC_ORDER)
    text = "\n".join(f"{k}: {_api_field(doc[k], k)}" for k in keys if doc[k] not in (None, "", [], {}))
    title = str(doc.get("api_name") or doc.get("functionality") or doc.get("api_call", "API"))
    return QAPassage(id=passage_id(title, text), title=title, text=text, section=str(doc.get("domain", "")))


def read_api_docs(path: Path | str) -> list[QAPassage]:
    """An APIBench API corpus (``<hub>_api.jsonl``) as passages: the retrieval corpus and random pool."""
    return [api_doc_passage(d) for d in _api_corpus(Path(path)).values()]


def _api_corpus(path: Path) -> dict[str, dict]:
    data, jsonl = _load(path)
    corpus: dict[str, dict] = {}
    for where, d in _entries(data, jsonl):
        if not isinstance(d, dict) or not isinstance(d.get("api_call"), str):
            raise RagloopError(f"{path}: {where} is not an API document (no 'api_call').")
        corpus.setdefault(" ".join(d["api_call"].split()), d)
    return corpus


def _find_api_corpus(path: Path) -> Path | None:
    """Gorilla keeps ``data/apibench/<hub>_train.json`` next to ``data/api/<hub>_api.jsonl``."""
    hub = path.name.split("_")[0].split(".")[0]
    for candidate in (path.parent / f"{hub}_api.jsonl", path.parent.parent / "api" / f"{hub}_api.jsonl"):
        if candidate.is_file():
            return candidate
    return None


def _read_apibench(data: Any, jsonl: bool, path: Path, api_docs: Path | None) -> list[QAItem]:
    corpus_path = api_docs or _find_api_corpus(path)
    corpus = _api_corpus(corpus_path) if corpus_path else {}
    by_domain: dict[str, list[QAPassage]] = {}
    for doc in corpus.values():
        by_domain.setdefault(str(doc.get("domain", "")), []).append(api_doc_passage(doc))

    def parse(r: dict) -> QAItem:
        fields = parse_gorilla_code(r["code"]) if isinstance(r.get("code"), str) else {}
        question = _text(r, "question", "instruction", required=False) or fields.get("Instruction", "")
        if not question:
            raise _Malformed("no question: neither a 'question' field nor an Instruction in 'code'")
        api_call = " ".join(_text(r, "api_call").split())
        doc = corpus.get(api_call) or r.get("api_data")
        if not isinstance(doc, dict):
            raise _Malformed(
                f"no API document for {api_call!r}: the record has no 'api_data' and the API corpus "
                f"({corpus_path or 'not found; pass api_docs='}) does not list it"
            )
        gold = api_doc_passage(doc)
        domain = str(doc.get("domain", fields.get("domain", "")))
        candidates = [p for p in by_domain.get(domain, []) if p.id != gold.id]
        return QAItem(
            id=_question_id(r, f"{question}\n{api_call}", "id", "question_id"),
            question=question,
            answers=[api_call],
            gold=[gold],
            distractors=_closest(question, candidates),  # same-domain APIs: the ones a model confuses
            answer_type="api_call",
            reasoning=fields.get("explanation") or None,
            group=api_call,  # the gold API: questions about one API must not straddle splits
            meta={
                "source": "apibench",
                "domain": domain,
                "api_name": str(doc.get("api_name", "")),
                "provider": r.get("provider", fields.get("api_provider", "")),
                "output_api_call": fields.get("api_call", ""),
            },
        )

    return _each(_entries(data, jsonl), parse)


# --- generic JSONL ----------------------------------------------------------------------------------


def _generic_passages(raw: Any, field_name: str) -> list[QAPassage]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _Malformed(f"'{field_name}' should be a list of passages")
    out = []
    for i, p in enumerate(raw, start=1):
        if isinstance(p, str):
            p = {"text": p}
        if not isinstance(p, dict) or not isinstance(p.get("text"), str) or not p["text"].strip():
            raise _Malformed(f"{field_name}[{i}] needs a non-empty 'text'")
        title, text = str(p.get("title") or ""), p["text"].strip()
        out.append(
            QAPassage(
                id=str(p.get("id") or passage_id(title, text)),
                title=title,
                text=text,
                source_path=str(p.get("source_path") or p.get("source") or ""),
                section=str(p.get("section") or ""),
            )
        )
    return out


def _generic_item(r: dict) -> QAItem:
    question = _text(r, "question")
    answer_type = str(r.get("answer_type") or "span")
    if answer_type not in ANSWER_TYPES:
        raise _Malformed(f"answer_type {answer_type!r} is not one of {', '.join(ANSWER_TYPES)}")
    answers = _answers(r)
    if answer_type == "label":
        answers = [a.lower() for a in answers]
    meta = r.get("meta") if isinstance(r.get("meta"), dict) else {}
    return QAItem(
        id=_question_id(r, question, "id"),
        question=question,
        answers=answers,
        gold=_generic_passages(r.get("gold"), "gold"),
        distractors=_generic_passages(r.get("distractors"), "distractors"),
        answer_type=answer_type,
        reasoning=_text(r, "reasoning", required=False) or None,
        group=str(r.get("group") or ""),
        meta={"source": "generic", **meta},
    )


READERS: dict[str, Callable[[Any, bool], list[QAItem]]] = {
    "hotpotqa": lambda data, jsonl: _each(_entries(data, jsonl), _hotpot_item),
    "squad": _read_squad,
    "pubmedqa": _read_pubmedqa,
    "generic": lambda data, jsonl: _each(_entries(data, jsonl), _generic_item),
}
