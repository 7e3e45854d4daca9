"""Names of many origins (issue 15): does a person's name survive PII anonymisation?

Runs the offline anonymiser over ``tests/fixtures/curation/pii_names_heldout.jsonl`` and prints recall per
origin and per context (plain prose apart), the people whose name leaks, false positives on the trap
records and on the word uses of given names (Comfort, Patience…), and the same summary on the seeded and
held-out sets the recogniser was first measured on. It also checks that the set is held out: every name
token is looked up in the lists the recogniser reads (the census files of the ``names`` package, every
word set and every cached name-list loader of ``ragloop.curation.pii``), and each hit is printed.

A mention is found when PERSON findings, after in-example propagation (``detect_example``, what
``anonymize_example`` replaces), cover all its letters. A person leaks when any of their name tokens
(particles such as Ní or Al- aside) is still a whole word of the anonymised text, as written or without
accents. Each record is anonymised alone, as one example; ``other_record`` mentions (a surname alone, in
a later record than the full name) can only be found by propagation across a dataset.

    python bench/pii_names.py [--ner offline] [--out] [--set pii_names_dev.jsonl]   # a few seconds
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import pkgutil
import re
import sys
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "curation"
PATTERN_TYPES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "IBAN_CODE", "CREDIT_CARD")
CONTEXTS = (
    "self_intro",
    "filed_by",
    "on_behalf_of",
    "beside_identifier",
    "email_local_part",
    "plain_prose",
    "other_record",
)
# Parts of a surname that say nothing about who it is: a leftover "Ní" or "Al-" is not a leak, and they
# are not looked up in the name lists ("Ni" is a census surname, "Al" a census first name).
PARTICLES = frozenset(
    {"ní", "nic", "ó", "ua", "al", "el", "bin", "ibn", "da", "de", "do", "dos", "das", "van", "von", "der"}
)
# Letters NFKD does not take apart; the recogniser's own fold keeps them, a later one may not.
_MORE_FOLDS = str.maketrans(
    {"ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ı": "i", "ß": "ss", "æ": "ae", "Æ": "Ae"}
    | {"þ": "th", "Þ": "Th", "ð": "d", "Ð": "D", "œ": "oe", "Œ": "Oe"}
)


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines()]


def plain(text: str) -> str:
    """Accents off, case kept ("Yılmaz" → "Yilmaz", "Þórunn" → "Thorunn"); the length may change."""
    base = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return base.translate(_MORE_FOLDS)


def fold(text: str) -> str:
    """The key two spellings of a name share ("Nováková", "NOVAKOVA" → "novakova")."""
    return plain(text).lower()


def name_tokens(full_name: str) -> list[str]:
    """The words that identify a person: "Kwesi Opoku-Agyemang" → Kwesi, Opoku, Agyemang; "Shaikha
    Al-Dosari" → Shaikha, Dosari."""
    parts = re.split(r"[\s\-]+", full_name)
    return [p for p in parts if p and p.lower() not in PARTICLES]


# --- is the set held out? ----------------------------------------------------------------------------


def recogniser_lists() -> dict[str, set[str]]:
    """Every list of words the PII recogniser reads, folded: the ``names`` package's census files in full
    (the recogniser uses their commoner part; any entry counts here), every module-level set of words in
    ``ragloop.curation.pii`` and its modules, and the dict or set fields of whatever its cached
    name-list loaders (``census_names()`` and any added later) return."""
    dist = importlib.metadata.distribution("names")
    lists: dict[str, set[str]] = {}
    for filename in ("dist.female.first", "dist.male.first", "dist.all.last"):
        text = Path(str(dist.locate_file(f"names/{filename}"))).read_text(encoding="ascii")
        lists[f"names/{filename}"] = {fold(line.split()[0]) for line in text.splitlines() if line.strip()}

    package = importlib.import_module("ragloop.curation.pii")
    modules = [package]
    if hasattr(package, "__path__"):
        modules += [
            importlib.import_module(m.name)
            for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
        ]
    seen: set[int] = set()  # a list that several modules import is one list

    def add(name: str, words: object) -> None:
        if _is_word_set(words) and id(words) not in seen:
            seen.add(id(words))
            lists[name] = {fold(w) for w in words}

    for module in modules:
        for attr, value in vars(module).items():
            if callable(value) and hasattr(value, "cache_info") and "name" in attr.lower():
                try:
                    loaded = value()
                except TypeError:  # needs arguments: not a list loader
                    continue
                fields = vars(loaded) if hasattr(loaded, "__dict__") else {"": loaded}
                for field, words in fields.items():
                    add(f"pii.{attr}().{field}".rstrip("."), words)
            elif not attr.startswith("__"):
                add(f"pii.{attr}", value)
    return lists


def _is_word_set(value: object) -> bool:
    return (
        isinstance(value, (set, frozenset, dict))
        and len(value) > 0
        and all(isinstance(w, str) and w.strip() and " " not in w.strip() for w in value)
    )


def _lookup_keys(token: str) -> set[str]:
    """The token, without its hyphens and apostrophes, and each of its parts ("O'Brien" is OBRIEN in
    the census files, "Jean-Luc" is looked up by "Jean")."""
    pieces = [token, re.sub(r"['’-]", "", token), *re.split(r"['’-]", token)]
    return {fold(p) for p in pieces if p and p.lower() not in PARTICLES}


def list_hits(records: list[dict], lists: dict[str, set[str]]) -> list[tuple[str, str, bool, list[str]]]:
    """(token, person, declared word name, lists holding it) for every name token some list holds."""
    people = {
        item["person"]: item.get("word_name", False)
        for r in records
        for item in r["pii"]
        if item["type"] == "PERSON"
    }
    hits = []
    for person, word_name in sorted(people.items()):
        for token in name_tokens(person):
            where = sorted(name for name, words in lists.items() if _lookup_keys(token) & words)
            if where:
                hits.append((token, person, word_name and token == name_tokens(person)[0], where))
    return hits


# --- scoring -----------------------------------------------------------------------------------------


def covered(item: dict, findings: Iterable, text: str, same_type: bool = True) -> bool:
    """Every letter and digit of the labelled value lies inside a finding (of its type)."""
    left = set(range(item["start"], item["end"]))
    for f in findings:
        if not same_type or f.entity_type == item["type"]:
            left -= set(range(f.start, f.end))
    return all(not text[i].isalnum() for i in left)


@dataclass
class NamesResult:
    """What one pass of the anonymiser over the names set gave."""

    mentions: list[tuple[dict, dict, bool]] = field(default_factory=list)  # record, PERSON item, found
    leaks: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (person, record id) -> tokens
    trap_findings: list[tuple[str, Any, str]] = field(default_factory=list)  # record id, finding, span
    traps_changed: list[str] = field(default_factory=list)
    spurious: list[tuple[str, Any, str]] = field(default_factory=list)  # findings over no labelled span
    word_uses: list[tuple[str, str, bool]] = field(default_factory=list)  # record id, word, replaced
    outputs: dict[str, str] = field(default_factory=dict)


def score_names(anonymizer: Any, records: list[dict]) -> NamesResult:
    """Each record anonymised alone, as one example: which mentions are found, which tokens survive."""
    res = NamesResult()
    for r in records:
        findings = anonymizer.detect_example([r["text"]])[0]
        output = res.outputs[r["id"]] = anonymizer.anonymize_example({"text": r["text"]})["text"]
        labelled = r["pii"] + r.get("keep", [])
        for f in findings:
            if not any(f.start < it["end"] and it["start"] < f.end for it in labelled):
                where = res.trap_findings if r["context"] == "trap" else res.spurious
                where.append((r["id"], f, r["text"][f.start : f.end]))
        for keep in r.get("keep", []):
            hit = any(f.start < keep["end"] and keep["start"] < f.end for f in findings)
            res.word_uses.append((r["id"], keep["value"], hit))
        for item in r["pii"]:
            if item["type"] == "PERSON":
                res.mentions.append((r, item, covered(item, findings, r["text"])))
        for person in {item["person"] for item in r["pii"] if item["type"] == "PERSON"}:
            res.leaks[(person, r["id"])] = _surviving(person, output, [k["value"] for k in r.get("keep", [])])
        if r["context"] == "trap" and output != r["text"]:
            res.traps_changed.append(r["id"])
    return res


def _surviving(person: str, output: str, kept: list[str]) -> list[str]:
    """Name tokens of ``person`` still standing as words in ``output``: as written, without accents
    ("Yilmaz" for "Yılmaz") or in capitals. Lower-case words are not names ("patience"), so case counts.
    A token the record also uses as an ordinary word (its ``keep`` spans: "The Comfort Plus heating plan")
    leaks only when it stands more often than those word uses, which must stay."""
    left = []
    for token in name_tokens(person):
        forms = {token, plain(token), token.upper(), plain(token).upper()}
        pattern = "|".join(rf"(?<!\w){re.escape(f)}(?!\w)" for f in sorted(forms))
        standing = max(len(re.findall(pattern, t)) for t in (output, plain(output)))
        if standing > sum(1 for word in kept if plain(word) == plain(token)):
            left.append(token)
    return left


def identifiers_left(records: list[dict], outputs: dict[str, str]) -> list[tuple[str, str]]:
    return [
        (r["id"], item["type"])
        for r in records
        for item in r["pii"]
        if item["type"] != "PERSON" and item["value"] in outputs[r["id"]]
    ]


def ratio(found: int, total: int) -> str:
    return f"{found}/{total} ({found / total:.2f})" if total else "–"


def names_tables(result: NamesResult, records: list[dict]) -> str:
    mentions, leaks = result.mentions, result.leaks
    context_of = {r["id"]: r["context"] for r in records}
    origin_of = {item["person"]: item["origin"] for _, item, _ in mentions}

    by_origin: dict[str, list] = defaultdict(list)
    for _, item, ok in mentions:
        by_origin[item["origin"]].append(ok)
    # A person's own records; a mention alone in a later record is the other_record row's business.
    leaked_own = {p for (p, rid), left in leaks.items() if left and context_of[rid] != "other_record"}
    people_of = defaultdict(set)
    for p, o in origin_of.items():
        people_of[o].add(p)
    rows = [
        [o, len(people_of[o]), ratio(sum(oks), len(oks)), len(people_of[o] & leaked_own)]
        for o, oks in sorted(by_origin.items())
    ]
    all_ok = [ok for _, _, ok in mentions]
    rows.append(["**all**", len(origin_of), ratio(sum(all_ok), len(all_ok)), len(leaked_own)])
    out = ["Per origin (mentions found; people with a name token left in their own records):", ""]
    out.append(table(["origin", "people", "mentions found", "people leaked"], rows))

    rows = []
    for ctx in CONTEXTS:
        ms = [(item, ok) for r, item, ok in mentions if r["context"] == ctx]
        people = {item["person"] for item, _ in ms}
        leaked = {p for (p, rid), left in leaks.items() if left and context_of[rid] == ctx}
        ids = [rid for rid, c in context_of.items() if c == ctx]
        rows.append([ctx, len(ids), len(people), ratio(sum(ok for _, ok in ms), len(ms)), len(leaked)])
    cued = [ok for r, _, ok in mentions if r["context"] not in ("plain_prose", "other_record")]
    rows.append(["contexts of the issue (first five)", "", "", ratio(sum(cued), len(cued)), ""])
    out += ["", "Per context:", ""]
    out.append(table(["context", "records", "people", "mentions found", "people leaked"], rows))

    by_form: dict[str, list] = defaultdict(list)
    for _, item, ok in mentions:
        by_form[item["form"]].append(ok)
    out += [
        "",
        "Per form of the mention: "
        + ", ".join(f"{k} {ratio(sum(v), len(v))}" for k, v in sorted(by_form.items())),
    ]
    words = [ok for _, item, ok in mentions if item.get("word_name")]
    out.append(f"Mentions of people whose given name is an English word: {ratio(sum(words), len(words))}")
    return "\n".join(out)


def existing_summary(anonymizer: Any, name: str) -> list[object]:
    records = load(name)
    seeded, traps = [r for r in records if r["pii"]], [r for r in records if not r["pii"]]
    found, after, total = Counter(), Counter(), Counter()
    left = 0
    for r in seeded:
        direct = anonymizer.detect(r["text"])
        propagated = anonymizer.detect_example([r["text"]])[0]
        output = anonymizer.anonymize_example({"text": r["text"]})["text"]
        for item in r["pii"]:
            total[item["type"]] += 1
            found[item["type"]] += covered(item, direct, r["text"])
            after[item["type"]] += covered(item, propagated, r["text"])
            left += item["value"] in output
    fps = sum(len(anonymizer.detect(r["text"])) for r in traps)
    patterns = (sum(found[t] for t in PATTERN_TYPES), sum(total[t] for t in PATTERN_TYPES))
    return [
        name,
        len(seeded),
        ratio(found["PERSON"], total["PERSON"]),
        ratio(after["PERSON"], total["PERSON"]),
        ratio(*patterns),
        ratio(sum(found.values()), sum(total.values())),
        f"{fps} on {len(traps)}",
        left,
    ]


def report(result: NamesResult, records: list[dict]) -> list[str]:
    """Everything but the tables: leaks, identifiers left, trap findings, word uses replaced."""
    lines = []
    ids_left = identifiers_left(records, result.outputs)
    n_ids = sum(1 for r in records for item in r["pii"] if item["type"] != "PERSON")
    lines += ["", f"Emails, phones and IBANs left in the output: {len(ids_left)} of {n_ids} {ids_left or ''}"]

    leaked = sorted((rid, p, left) for (p, rid), left in result.leaks.items() if left)
    lines += ["", f"Leaked (record, person: tokens left), {len(leaked)}:"]
    lines += [f"- {rid} {p}: {', '.join(left)}" for rid, p, left in leaked]

    n_traps = sum(r["context"] == "trap" for r in records)
    lines += [
        "",
        f"Findings on the {n_traps} trap records: {len(result.trap_findings)}"
        f" (records changed: {len(result.traps_changed)})",
    ]
    lines += [f"- {rid}: {f.entity_type} {span!r}" for rid, f, span in result.trap_findings]
    replaced = [(rid, w) for rid, w, hit in result.word_uses if hit]
    lines += [
        f"Word uses of given names replaced: {len(replaced)} of {len(result.word_uses)} {replaced or ''}"
    ]
    lines += [f"Findings over no labelled span in the person records: {len(result.spurious)}"]
    lines += [f"- {rid}: {f.entity_type} {span!r}" for rid, f, span in result.spurious]
    return lines


def as_dataset(anonymizer: Any, records: list[dict]) -> list[str]:
    """The whole set anonymised as one dataset (``anonymize_examples``, what ``ragloop dataset build``
    does; added for issue 15): the ``other_record`` mentions can be found only this way."""
    outputs = anonymizer.anonymize_examples([{"text": r["text"]} for r in records])
    out = {r["id"]: o["text"] for r, o in zip(records, outputs, strict=True)}
    later = [
        (r, it)
        for r in records
        if r["context"] == "other_record"
        for it in r["pii"]
        if it["type"] == "PERSON"
    ]

    def kept(r: dict) -> list[str]:
        return [k["value"] for k in r.get("keep", [])]

    replaced = sum(not _surviving(it["person"], out[r["id"]], kept(r)) for r, it in later)
    leaked = sorted({p for r in records for p in {it["person"] for it in r["pii"] if it["type"] == "PERSON"}
                     if _surviving(p, out[r["id"]], kept(r))})  # fmt: skip
    traps = [r["id"] for r in records if r["context"] == "trap" and out[r["id"]] != r["text"]]
    # Offsets move as names are replaced: a word use is kept when its word is still there as often.
    words = [(r["id"], k["value"]) for r in records for k in r.get("keep", [])
             if len(re.findall(rf"(?<!\w){re.escape(k['value'])}(?!\w)", out[r["id"]]))
             < sum(j["value"] == k["value"] for j in r["keep"])]  # fmt: skip
    return [
        "",
        "The whole set as one dataset (`anonymize_examples`: names also carried across records):",
        f"- other_record mentions replaced: {ratio(replaced, len(later))}",
        f"- people with a name token left in some record: {len(leaked)} {leaked or ''}",
        f"- trap records changed: {len(traps)} {traps or ''}; word uses of given names changed: {len(words)} {words or ''}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ner", default="offline", help="as Anonymizer(ner=…)")
    parser.add_argument("--out", action="store_true", help="also write bench/out/pii_names.md")
    parser.add_argument(
        "--set",
        default="pii_names_heldout.jsonl",
        help="the names set under tests/fixtures/curation (pii_names_dev.jsonl: the development set)",
    )
    args = parser.parse_args()

    start = time.perf_counter()
    from ragloop.curation.pii import Anonymizer

    anonymizer = Anonymizer(secret="bench-pii-names", ner=args.ner)
    ready = time.perf_counter()
    records = load(args.set)
    result = score_names(anonymizer, records)
    per_record_ms = (time.perf_counter() - ready) / len(records) * 1000

    lines = [f"# PII: names of many origins (ner={args.ner}, {len(records)} records)", ""]
    lines.append(names_tables(result, records))
    lines += report(result, records)

    if hasattr(anonymizer, "anonymize_examples"):
        lines += as_dataset(anonymizer, records)

    headers = ["set", "records with PII", "PERSON found", "PERSON after propagation", "patterns"]
    headers += ["all types", "trap findings", "identifiers left"]
    rows = [existing_summary(anonymizer, n) for n in ("pii_seeded.jsonl", "pii_heldout.jsonl")]
    lines += ["", "Seeded and held-out sets, same anonymiser:", "", table(headers, rows)]

    hits = list_hits(records, recogniser_lists())
    undeclared = sum(not declared for _, _, declared, _ in hits)
    lines += [
        "",
        f"Name tokens in the recogniser's lists: {len(hits)} ({undeclared} not declared word names)",
    ]
    lines += [
        f"- {token} ({person}){' — a word name, on purpose' if declared else ''}: {', '.join(where)}"
        for token, person, declared, where in hits
    ]
    lines += [
        "",
        f"Import + Anonymizer {ready - start:.1f} s; detect + anonymise {per_record_ms:.1f} ms per record",
    ]
    text = "\n".join(lines)
    if args.out:
        write("pii_names.md", text)
    else:
        print(text)


if __name__ == "__main__":
    main()
