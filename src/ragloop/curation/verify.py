"""Check that what an answer cites is really in the passage it cites (curation, stage 5 of the loop).

Training on answers whose citations are invented teaches a model to invent citations, so every cited
statement and every quoted span is checked against its passage before an interaction can become training
data. The check is lexical and deterministic on purpose: it runs on every record, offline, in microseconds,
and its verdicts can be explained in one line ("number 24 not in passage"). The method, its threshold and
the measured precision/recall on a hand-written set of pairs are in docs/curation.md.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

from ragloop.generation.citations import CITE, split_sentences

SUPPORT_METHOD = "support_v1"
# Chosen on the first half of tests/fixtures/curation/citation_pairs.jsonl (docs/curation.md): the
# lowest threshold with a precision of "supported" >= 0.9 there; the second half was held out.
DEFAULT_THRESHOLD = 0.8
# A quote this long is a claim of its own: found verbatim, it settles the statement.
MIN_QUOTE_WORDS = 4


@dataclass(frozen=True)
class Verdict:
    """Whether a passage supports a statement.

    ``score`` is the lexical support in [0, 1] (1.0 for an exact quote, 0.0 when a hard check failed);
    ``method`` says which check decided (``exact_quote``, ``exact_match``, ``support_v1``, ``citation``);
    ``reason`` is one human-readable line a reviewer can act on.
    """

    supported: bool
    score: float
    method: str
    reason: str


# --- normalisation ---------------------------------------------------------------------------------------

_QUOTE_CHARS = str.maketrans({c: '"' for c in "“”„‟«»″"} | {c: "'" for c in "‘’‚‛′`´"})
_DASHES = re.compile(r"[\u2010-\u2015\u2212\u00ad]")
_SPACE = re.compile(r"\s+")


def normalise_for_matching(text: str) -> str:
    """Case-, whitespace-, quote- and dash-insensitive form, so a quote copied by a model still matches."""
    text = unicodedata.normalize("NFKC", text).translate(_QUOTE_CHARS)
    text = _DASHES.sub("-", text)
    return _SPACE.sub(" ", text).strip().lower()


# Quotes are looked for in the raw text; straight double quotes only pair up within one sentence-sized run.
_QUOTE = re.compile(r'##begin_quote##(.*?)##end_quote##|[“„]([^”“"]+)[”“]|"([^"\n]+)"', re.S)


def find_quotes(text: str) -> list[str]:
    """Quoted spans: RAFT's ``##begin_quote##…##end_quote##`` and text in double quotes."""
    return [next(g for g in m.groups() if g is not None).strip() for m in _QUOTE.finditer(text)]


def _split(words: str) -> list[str]:
    return words.split()


# --- quantities: numbers, amounts and dates that must not change between passage and statement ---------

_MONTHS = {
    m: i
    for i, names in enumerate(
        [
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ],
        start=1,
    )
    for m in names
}
_MONTH = r"(?P<month>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DATES = [
    re.compile(r"\b(?P<day>\d{1,2})(?:st|nd|rd|th)?\s+(?:of\s+)?" + _MONTH + r",?\s+(?P<year>\d{4})\b"),
    re.compile(r"\b" + _MONTH + r"\s+(?P<day>\d{1,2})(?:st|nd|rd|th)?,?\s+(?P<year>\d{4})\b"),
    re.compile(r"\b(?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})\b"),
    re.compile(r"\b(?P<day>\d{1,2})[./](?P<month>\d{1,2})[./](?P<year>\d{4})\b"),
    re.compile(r"\b" + _MONTH + r"\s+(?P<year>\d{4})\b"),
]
_TIME = re.compile(r"\b(\d{1,2}):(\d{2})\b")
# Thousands may be grouped by comma, space or thin space ("20 000 000", "50,000"); scale words multiply.
_NUMBER = re.compile(
    r"(?<![\w.])(\d{1,3}(?:[,\u00a0\u202f ]\d{3})+|\d+)(\.\d+)?"
    r"(?:\s*(thousand|million|billion|bn)\b)?(?![\w])"
)
# Only unambiguous scale words: "5 m" is as likely five metres as five million.
_SCALE = {"thousand": 1e3, "million": 1e6, "billion": 1e9, "bn": 1e9}
# "one", "first" and "second" are left out: they are pronouns and ordinary words more often than numbers.
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        _split(
            "zero _ two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
            "sixteen seventeen eighteen nineteen twenty"
        )
    )
    if w != "_"
} | {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_ORDINALS = {
    w: i
    for i, w in enumerate(
        _split(
            "_ _ _ third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth "
            "fifteenth sixteenth seventeenth eighteenth nineteenth twentieth"
        )
    )
    if w != "_"
}
_WORD_NUMBER = re.compile(r"\b(" + "|".join(_NUMBER_WORDS | _ORDINALS) + r")\b")


def _canonical(value: float) -> str:
    return format(value, "f").rstrip("0").rstrip(".") if value % 1 else str(int(value))


def quantities(text: str) -> set[str]:
    """Canonical forms of the dates, times and numbers in ``text`` (``"2018-05-25"``, ``"9:00"``,
    ``"20000000"``), so "EUR 20 million" equals "20 000 000 EUR" and "25 May 2016" differs from
    "25 May 2018" even though both contain 25. A date brings its year and month along (``"2018"``,
    ``"2018-05"``), so a statement may name the year of a dated event."""
    text = normalise_for_matching(text)
    found: set[str] = set()

    def take(canonical: str) -> str:
        found.add(canonical)
        return " "

    for pattern in _DATES:
        text = pattern.sub(lambda m: take(_date_key(m)), text)
    # A date also states its month and year: "born in 1941" is supported by "born 14 March 1941".
    for key in [k for k in found if "-" in k]:
        found.update({key[:4], key[:7]})
    text = _TIME.sub(lambda m: take(f"{int(m.group(1))}:{m.group(2)}"), text)
    text = _NUMBER.sub(lambda m: take(_number_key(m)), text)
    for m in _WORD_NUMBER.finditer(text):
        word = m.group(1)  # "zero" is 0, which is falsy: look the word up, do not `or` the values
        found.add(str(_NUMBER_WORDS[word] if word in _NUMBER_WORDS else _ORDINALS[word]))
    return found


def _date_key(m: re.Match[str]) -> str:
    parts = m.groupdict()
    month = parts["month"]
    month_n = int(month) if month.isdigit() else _MONTHS[month]
    day = f"-{int(parts['day']):02d}" if parts.get("day") else ""
    return f"{parts['year']}-{month_n:02d}{day}"


def _number_key(m: re.Match[str]) -> str:
    value = float(re.sub(r"[,\u00a0\u202f ]", "", m.group(1)) + (m.group(2) or ""))
    return _canonical(value * _SCALE.get(m.group(3) or "", 1.0))


# --- lexical support ----------------------------------------------------------------------------------------

# Function words, modals, quantifiers and negators: they carry no topic (negation is checked on its own).
_STOPWORDS = frozenset(
    _split(
        """a about above after again against all also already am an and any are as at be because been before
    being below between both but by can cannot could did do does doing down during each either etc even ever
    every few for from further had has have having he her here hers herself him himself his how however i if
    in into is it its itself just many may me might more most much must my myself neither never no none nor
    not nothing now of off often on once only or other our ours ourselves out over own per quite rather
    really same several shall she should since so some still such than that the their theirs them themselves then
    there these they this those through thus to too under until up upon us various very via was we were what
    when where whether which while who whom whose why will with within without would yet you your yours
    yourself yourselves"""
    )
)
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_stemmer = snowballstemmer.stemmer("english")


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return _stemmer.stemWord(word)


def _is_content(word: str) -> bool:
    return len(word) > 1 and word not in _STOPWORDS and word not in _NUMBER_WORDS and word not in _ORDINALS


def _content_sequence(text: str) -> list[str]:
    words = (w.split("'")[0] for w in _WORD.findall(normalise_for_matching(text)))
    return [_stem(w) for w in words if _is_content(w)]


def content_stems(text: str) -> set[str]:
    """Stemmed content words: what a statement claims, minus grammar, numbers and negation."""
    return set(_content_sequence(text))


def _matches(stem: str, window: set[str]) -> bool:
    # Snowball keeps some derivations apart ("notifi"/"notif", "eras"/"erasur"): a shared prefix of at
    # least four letters that is a whole stem counts as the same word.
    if stem in window:
        return True
    return len(stem) >= 4 and any(w.startswith(stem) or (len(w) >= 4 and stem.startswith(w)) for w in window)


def _bigrams(seq: list[str]) -> set[tuple[str, str]]:
    return set(zip(seq, seq[1:], strict=False))


def _windows(passage: str) -> list[tuple[str, list[str], int]]:
    """Each passage sentence and each pair of neighbouring sentences: (text, content stems in order,
    number of sentences). A statement often merges two neighbouring sentences; rarely more."""
    sentences = [passage[s:e] for s, e in split_sentences(passage)] or [passage]
    seqs = [_content_sequence(s) for s in sentences]
    out = [(s, q, 1) for s, q in zip(sentences, seqs, strict=True)]
    for i in range(len(sentences) - 1):
        out.append((f"{sentences[i]} {sentences[i + 1]}", seqs[i] + seqs[i + 1], 2))
    return out


def support_score(statement: str, passage: str) -> tuple[float, str]:
    """support_v1: the share of the statement's content stems found in the best passage window, and the
    text of that window. A statement with no content words scores 0.

    On equal share a single sentence beats a pair, then shared word order (content bigrams) decides:
    "payments in euro within the EU" belongs to the sentence that says it in that order, which is the
    one whose negation must agree.
    """
    seq = _content_sequence(statement)
    stems, bigrams = set(seq), _bigrams(seq)
    if not stems:
        return 0.0, ""
    best, best_text = (-1.0, 0, 0), ""
    for text, window_seq, n_sentences in _windows(passage):
        window = set(window_seq)
        share = sum(_matches(s, window) for s in stems) / len(stems)
        key = (round(share, 6), -n_sentences, len(bigrams & _bigrams(window_seq)))
        if key > best:
            best, best_text = key, text
    return best[0], best_text


# --- negation ---------------------------------------------------------------------------------------------

# Fixed phrases whose "not"/"no"/"without" is a bound or a formula, not a denial.
_NOT_NEGATION = re.compile(
    r"\b(?:not|no) (?:later|more|less|fewer|earlier|sooner) than\b|\bnot (?:below|above|under|over|exceed\w*)\b"
    r"|\bnot only\b|\bwhether or not\b|\bwithout (?:undue )?delay\b|\bwithout prejudice\b|\bno\.? ?\d"
)
_NEGATORS = frozenset(
    _split("not no never none nobody nothing neither nor without cannot unable prohibited forbidden")
)
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)?|[,;:.!?()]")
SCOPE_WORDS = 3  # content words after a negator that it is taken to deny


def negation_scopes(text: str) -> list[set[str]]:
    """One entry per denial in ``text``: the stems of the few content words it denies, up to the end of
    the clause. Comparing scopes, not bare counts, keeps a "no longer necessary" in a clause the
    statement never mentions from vetoing it."""
    tokens = _TOKEN.findall(_NOT_NEGATION.sub(" ", normalise_for_matching(text)))
    scopes: list[set[str]] = []
    for i, tok in enumerate(tokens):
        if tok not in _NEGATORS and not tok.endswith("n't"):
            continue
        scope: set[str] = set()
        for nxt in tokens[i + 1 :]:
            if nxt in ",;:.!?()" or len(scope) == SCOPE_WORDS:
                break
            if nxt.isalpha() and _is_content(nxt):
                scope.add(_stem(nxt))
        scopes.append(scope)
    return scopes


def denials_about(text: str, topic: set[str]) -> int:
    """Denials in ``text`` whose scope touches ``topic``; a denial with no content word after it counts."""
    return sum(1 for scope in negation_scopes(text) if not scope or any(_matches(w, topic) for w in scope))


# --- verdicts ----------------------------------------------------------------------------------------------


def _strip_citations(text: str) -> str:
    return _SPACE.sub(" ", CITE.sub(" ", text)).strip()


def verify_statement(statement: str, passage: str, threshold: float = DEFAULT_THRESHOLD) -> Verdict:
    """Does ``passage`` support ``statement`` (an answer sentence, its [n] markers ignored)?

    In order: a quoted span must appear verbatim (after normalisation) — a long one found settles it;
    a statement found verbatim is supported; otherwise support_v1, with two hard checks that lexical
    overlap cannot see: every number or date in the statement must be in the passage, and the statement
    and its best-matching passage sentence must agree on negation.
    """
    statement = _strip_citations(statement)
    norm_passage = normalise_for_matching(passage)
    quotes = find_quotes(statement)
    for q in quotes:
        if normalise_for_matching(q).strip(" .,;:") not in norm_passage:
            return Verdict(False, 0.0, "exact_quote", f"quoted text not in passage: {q[:80]!r}")
    if any(len(q.split()) >= MIN_QUOTE_WORDS for q in quotes):
        return Verdict(True, 1.0, "exact_quote", "quoted text found verbatim in passage")

    body = normalise_for_matching(statement).strip(" .;:")
    if len(body.split()) >= MIN_QUOTE_WORDS and body in norm_passage:
        return Verdict(True, 1.0, "exact_match", "statement found verbatim in passage")

    missing = sorted(quantities(statement) - quantities(passage))
    if missing:
        return Verdict(False, 0.0, SUPPORT_METHOD, f"number or date not in passage: {', '.join(missing)}")
    score, window = support_score(statement, passage)
    if score < threshold:
        return Verdict(False, score, SUPPORT_METHOD, f"support {score:.2f} below threshold {threshold:.2f}")
    said = denials_about(statement, content_stems(window))
    found = denials_about(window, content_stems(statement))
    if said != found:
        reason = f"negation mismatch: {said} in the statement, {found} in the passage sentence"
        return Verdict(False, 0.0, SUPPORT_METHOD, reason)
    return Verdict(True, score, SUPPORT_METHOD, f"support {score:.2f} at threshold {threshold:.2f}")


@dataclass(frozen=True)
class Check:
    """One cited statement of an answer and its verdict.

    ``cited`` are the passage numbers the statement cites together (1-based; ``(n,)`` for one citation,
    ``(n,)`` or ``()`` for a quote in a sentence that cites nothing: the passage it was found in, if any).
    ``unnecessary`` are cited passages that support nothing of the statement (no content word, number or
    quote of it): reported, not held against a statement the other citations support.
    """

    cited: tuple[int, ...]
    statement: str
    verdict: Verdict
    unnecessary: tuple[int, ...] = ()

    @property
    def supported(self) -> bool:
        return self.verdict.supported


def _cited_statements(sentence: str) -> list[tuple[tuple[int, ...], str]]:
    """(numbers, statement) for each group of citations in a sentence. "A [1] and B [2]." attributes "A"
    to [1] and "and B" to [2]; adjacent markers ("[1][2]", "[1] [2]") and lists ("[1, 2]") cite the text
    before them together; a fragment too short to check on its own falls back to the whole sentence."""
    out: list[tuple[tuple[int, ...], str]] = []
    start, pending = 0, []
    marks = list(CITE.finditer(sentence))
    for i, m in enumerate(marks):
        pending.append(m)
        if i + 1 < len(marks) and not sentence[m.end() : marks[i + 1].start()].strip():
            continue  # "[1][2]": both markers share the text before them
        fragment = sentence[start : pending[0].start()]
        if len(content_stems(fragment)) < 3:
            fragment = sentence
        numbers: list[int] = []
        for p in pending:
            for raw in re.split(r"\s*[,;]\s*", p.group(1)):
                if int(raw) not in numbers:
                    numbers.append(int(raw))
        out.append((tuple(numbers), _strip_citations(fragment)))
        start, pending = m.end(), []
    return out


# --- several passages cited together ------------------------------------------------------------------------

# Words a name may hold in lower case ("League of Ireland", "Leonardo da Vinci").
_NAME_JOINERS = frozenset(_split("of the and de da del della di du la le van von der den y for on upon in"))
_TOKENS = re.compile(r"\w+")
# Where a claim joined from several passages splits into its parts: clause commas and semicolons, and the
# conjunctions and relative pronouns that start a new clause.
_CLAUSE = re.compile(r"\s*[;,]\s*|\s+(?:and|but|while|whereas|which|who|whose|where|although)\s+", re.I)
MIN_PART_STEMS = 2  # a clause with fewer content words is joined to the one before it


def _tokens(text: str) -> list[str]:
    return _TOKENS.findall(normalise_for_matching(text))


def is_span(statement: str) -> bool:
    """A bare answer span rather than a claim: a name, a place, a date or a number ("Gannett Holdings",
    "Tyrol, Austria", "14 March 1941") — every word capitalised, a number, or a joiner inside a name."""
    words = re.findall(r"[\w'’-]+", _strip_citations(statement))
    if not words or len(words) > 8:
        return False
    return all(w[0].isupper() or w[0].isdigit() or w.lower() in _NAME_JOINERS for w in words) and any(
        w[0].isupper() or w[0].isdigit() for w in words
    )


def _contains_run(passage: str, span: str) -> bool:
    """The span's words, in order and contiguous, are in the passage (case, punctuation and quotes
    ignored; a leading article may be missing from the passage)."""
    want, have = _tokens(span), _tokens(passage)
    while want and want[0] in ("the", "a", "an"):
        want = want[1:]
    return bool(want) and any(have[i : i + len(want)] == want for i in range(len(have) - len(want) + 1))


def _clauses(statement: str) -> list[str]:
    parts: list[str] = []
    for piece in _CLAUSE.split(statement):
        if not piece.strip():
            continue
        if parts and len(content_stems(piece)) < MIN_PART_STEMS:
            parts[-1] = f"{parts[-1]} {piece}"
        else:
            parts.append(piece)
    if len(parts) > 1 and len(content_stems(parts[0])) < MIN_PART_STEMS:
        parts[1] = f"{parts[0]} {parts[1]}"
        parts = parts[1:]
    return parts


def _shares_something(statement: str, passage: str) -> bool:
    """The passage holds at least one content word, number or quote of the statement."""
    stems = content_stems(statement)
    window = content_stems(passage)
    if any(_matches(s, window) for s in stems) or quantities(statement) & quantities(passage):
        return True
    norm = normalise_for_matching(passage)
    return any(normalise_for_matching(q).strip(" .,;:") in norm for q in find_quotes(statement))


def verify_cited(
    statement: str, cited: dict[int, str], threshold: float = DEFAULT_THRESHOLD
) -> tuple[Verdict, tuple[int, ...]]:
    """Do the passages a statement cites (``{n: text}``) support it together? Returns the verdict and the
    cited passages that support nothing of it.

    The rule (docs/curation.md, "Several citations"): every quote must be in one of the cited passages; a
    bare answer span (a name, place, date, number) must be found whole, in order, in one of them — the
    bridge passage of a multi-hop answer need not hold it, and the words of a wrong name cannot be
    gathered from two passages; a claim is supported when one cited passage supports all of it, or when
    it splits into clauses that each are supported by one cited passage ("X is owned by Y [1], a
    subsidiary of Z [2]" written as "... [1][2]"). With one citation this is ``verify_statement``.
    """
    statement = _strip_citations(statement)
    unnecessary = tuple(n for n, p in cited.items() if not _shares_something(statement, p))
    passages = list(cited.values())
    if len(passages) == 1:
        return verify_statement(statement, passages[0], threshold), unnecessary
    norms = [normalise_for_matching(p) for p in passages]
    quotes = find_quotes(statement)
    for q in quotes:
        if not any(normalise_for_matching(q).strip(" .,;:") in n for n in norms):
            return Verdict(
                False, 0.0, "exact_quote", f"quoted text in no cited passage: {q[:80]!r}"
            ), unnecessary
    if any(len(q.split()) >= MIN_QUOTE_WORDS for q in quotes):
        return Verdict(True, 1.0, "exact_quote", "quoted text found verbatim in a cited passage"), unnecessary
    if is_span(statement):
        n = next((n for n, p in cited.items() if _contains_run(p, statement)), None)
        if n is None:
            return Verdict(False, 0.0, "span", "answer span in no cited passage as a whole"), unnecessary
        return Verdict(True, 1.0, "span", f"answer span found in passage [{n}]"), unnecessary
    verdicts = [verify_statement(statement, p, threshold) for p in passages]
    best = max(verdicts, key=lambda v: (v.supported, v.score))
    if best.supported:
        return best, unnecessary
    parts = _clauses(statement)
    if len(parts) > 1:
        found = [max((verify_statement(part, p, threshold) for p in passages), key=lambda v: (v.supported, v.score))
                 for part in parts]  # fmt: skip
        if all(v.supported for v in found):
            score = min(v.score for v in found)
            reason = (
                f"each of its {len(parts)} clauses supported by a cited passage (lowest support {score:.2f})"
            )
            return Verdict(True, score, "joint", reason), unnecessary
        missing = next(part for part, v in zip(parts, found, strict=True) if not v.supported)
        reason = f"clause {missing.strip()[:60]!r} supported by no cited passage"
        return Verdict(False, best.score, "joint", reason), unnecessary
    return best, unnecessary


def verify_answer(answer: str, passages: list[str], threshold: float = DEFAULT_THRESHOLD) -> list[Check]:
    """One Check per cited statement of ``answer`` (the [n] are 1-based into ``passages``; a number outside
    the list makes its statement unsupported), plus one per quote in a sentence that cites nothing: it
    must appear in some passage, and ``cited`` is that passage's number (empty if none)."""
    out: list[Check] = []
    for s, e in split_sentences(answer) or [(0, len(answer))]:
        sentence = answer[s:e]
        cited = _cited_statements(sentence)
        for numbers, statement in cited:
            bad = [n for n in numbers if not 1 <= n <= len(passages)]
            if bad:
                reason = f"cites [{bad[0]}] but {len(passages)} passage(s) were shown"
                out.append(Check(numbers, statement, Verdict(False, 0.0, "citation", reason)))
                continue
            verdict, unnecessary = verify_cited(statement, {n: passages[n - 1] for n in numbers}, threshold)
            out.append(Check(numbers, statement, verdict, unnecessary))
        if cited:
            continue
        for quote in find_quotes(sentence):
            verdicts = [verify_statement(f'"{quote}"', p, threshold) for p in passages]
            n = next((i for i, v in enumerate(verdicts, 1) if v.supported), 0)
            if n:
                out.append(Check((n,), quote, verdicts[n - 1]))
            else:
                out.append(
                    Check((), quote, Verdict(False, 0.0, "exact_quote", "quoted text not in any passage"))
                )
    return out
