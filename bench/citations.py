"""Precision and recall of the citation verifier on the two hand-written sets (issue 21), so a change to
the rule is judged by numbers, not by a few examples:

- ``citation_pairs.jsonl``: 95 single statement / passage pairs (the threshold was chosen on the first half);
- ``multi_citation_cases.jsonl``: whole answers that cite several passages at once (bridge citations of a
  multi-hop answer, claims that need two passages, wrong spans whose citations each support something else,
  citations to irrelevant passages). "Grounded" is what ``ragloop eval`` reports and what curation keeps.

    python bench/citations.py            # a second; prints the table and every wrong verdict
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "curation"


def _load(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def _row(name: str, said: list[bool], want: list[bool]) -> str:
    tp = sum(s and w for s, w in zip(said, want, strict=True))
    fp = sum(s and not w for s, w in zip(said, want, strict=True))
    fn = sum(w and not s for s, w in zip(said, want, strict=True))
    p, r = tp / ((tp + fp) or 1), tp / ((tp + fn) or 1)
    return f"| {name} | {len(said)} | {tp} | {fp} | {fn} | {p:.3f} | {r:.3f} |"


def main() -> None:
    from ragloop.curation.verify import verify_statement
    from ragloop.evaluation.metrics import groundedness

    pairs = _load("citation_pairs.jsonl")
    half = len(pairs) // 2
    said_pairs = [verify_statement(p["statement"], p["passage"]).supported for p in pairs]
    want_pairs = [p["supported"] for p in pairs]

    cases = _load("multi_citation_cases.jsonl")
    said_cases = [bool(groundedness(c["answer"], c["passages"])) for c in cases]
    want_cases = [c["grounded"] for c in cases]

    print('| set (of "supported" / "grounded") | n | TP | FP | FN | precision | recall |')
    print("|---|---|---|---|---|---|---|")
    print(_row("pairs, first half (tuning)", said_pairs[:half], want_pairs[:half]))
    print(_row("pairs, second half (held out)", said_pairs[half:], want_pairs[half:]))
    print(_row("pairs, whole set", said_pairs, want_pairs))
    print(_row("multi-citation answers", said_cases, want_cases))
    right = Counter(c["kind"] for c, s in zip(cases, said_cases, strict=True) if s == c["grounded"])
    total = Counter(c["kind"] for c in cases)
    print("\nmulti-citation, right verdicts per kind: "
          + ", ".join(f"{k} {right[k]}/{n}" for k, n in total.items()))  # fmt: skip
    print("\nwrong verdicts:")
    for c, s in zip(cases, said_cases, strict=True):
        if s != c["grounded"]:
            print(f"  [{c['kind']}] said {'grounded' if s else 'not grounded'}: {c['answer']}")
    for p, s in zip(pairs, said_pairs, strict=True):
        if s != p["supported"]:
            print(f"  [pair {p['kind']}] said {'supported' if s else 'unsupported'}: {p['statement']}")


if __name__ == "__main__":
    main()
