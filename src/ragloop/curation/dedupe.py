"""Drop repeated questions and keep evaluation questions out of training data (curation, stage 5).

Users ask the same thing many times; training on fifty copies of one question teaches the model that
question's answer fifty times over, and a training question that is a near copy of an evaluation
question makes the evaluation measure memory. Exact copies are caught by a key on the normalised text,
near copies by MinHash LSH (datasketch) over word bigrams, confirmed by the exact Jaccard similarity of
the bigram sets so the answer does not depend on MinHash's estimate. Seeds are fixed: the same input
always gives the same indices.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

from datasketch import MinHash, MinHashLSH

DEFAULT_THRESHOLD = 0.8  # Jaccard similarity of the word-bigram sets
NUM_PERM = 128
SEED = 1
# Bigrams keep word order ("a controller … a processor" is not "a processor … a controller") while one
# changed word in a ten-word question still leaves most of them shared.
SHINGLE_WORDS = 2

_NON_WORD = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")
_TEMPLATE = MinHash(num_perm=NUM_PERM, seed=SEED)  # permutations are drawn once and shared


def normalise_question(q: str) -> str:
    """Case, accents' encoding, punctuation and spacing removed: "What is  the GDPR?" and "what is the
    gdpr" are one question."""
    text = unicodedata.normalize("NFKC", q).casefold().replace("’", "'")
    return _SPACE.sub(" ", _NON_WORD.sub(" ", text)).strip()


def exact_key(q: str) -> str:
    """Key of the normalised question: equal keys are exact duplicates."""
    return hashlib.sha256(normalise_question(q).encode()).hexdigest()


def shingles(text: str) -> frozenset[str]:
    """Word bigrams of the normalised text (the whole text when it has fewer words)."""
    words = normalise_question(text).split()
    if len(words) < SHINGLE_WORDS:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i : i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _minhash(grams: Iterable[str]) -> MinHash:
    m = MinHash(num_perm=NUM_PERM, seed=SEED, permutations=_TEMPLATE.permutations, scheme=_TEMPLATE.scheme)
    m.update_batch([g.encode() for g in grams])
    return m


# LSH misses many pairs whose similarity is right at its threshold; candidates are gathered this much
# lower and the exact Jaccard decides, so precision is exact and recall near the threshold is kept.
CANDIDATE_MARGIN = 0.15


class _Index:
    """MinHash LSH for candidates, exact Jaccard to decide."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.lsh = MinHashLSH(threshold=max(0.05, threshold - CANDIDATE_MARGIN), num_perm=NUM_PERM)
        self.grams: dict[int, frozenset[str]] = {}
        self.keys: set[str] = set()

    def add(self, i: int, text: str, grams: frozenset[str]) -> None:
        self.keys.add(exact_key(text))
        if grams:
            self.lsh.insert(i, _minhash(grams))
            self.grams[i] = grams

    def matches(self, text: str, grams: frozenset[str]) -> bool:
        if exact_key(text) in self.keys:
            return True
        if not grams:
            return False
        candidates = self.lsh.query(_minhash(grams))
        return any(jaccard(grams, self.grams[c]) >= self.threshold for c in candidates)


def find_duplicates(texts: list[str], threshold: float = DEFAULT_THRESHOLD) -> list[int]:
    """Indices to drop: each text that repeats, exactly or nearly (bigram Jaccard ≥ ``threshold``), a
    text kept before it. The first of each group is kept, so the result is a plain filter."""
    index = _Index(threshold)
    drop: list[int] = []
    for i, text in enumerate(texts):
        grams = shingles(text)
        if index.matches(text, grams):
            drop.append(i)
        else:
            index.add(i, text, grams)
    return drop


def near_duplicate_of(
    texts: list[str], reference_texts: list[str], threshold: float = DEFAULT_THRESHOLD
) -> list[bool]:
    """For each text, whether it repeats one of ``reference_texts`` (an evaluation set), exactly or
    nearly: the training examples to leave out so the evaluation stays clean."""
    index = _Index(threshold)
    for i, ref in enumerate(reference_texts):
        index.add(i, ref, shingles(ref))
    return [index.matches(text, shingles(text)) for text in texts]
