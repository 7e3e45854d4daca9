"""The one rule that turns a model's output into an answer, and the scores that compare answers.

RAFT targets are written so that this rule gives back their answer exactly, and evaluation applies the same
rule to model outputs. Training and evaluation therefore cannot drift apart: change the rule here and both
sides change together. Scores follow the SQuAD evaluation script (EM, token F1) and Gorilla's AST match for
API calls, so numbers are comparable with published ones.
"""

from __future__ import annotations

import ast
import re
import string
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

try:
    from ragloop.curation.refusal import ABSTAIN_ANSWER
except ImportError:  # pragma: no cover - curation.refusal is written in parallel; same wording
    ABSTAIN_ANSWER = "The documents do not say."

LABELS = ("yes", "no", "maybe")

# "Answer: ..." at the start of a line (the builder's targets; also "Final answer:", "**Answer:**",
# "##Answer:"), or RAFT's original "<ANSWER>:" anywhere. Only line-start "Answer:" counts so that an answer
# which itself mentions "the answer: ..." mid-sentence is not cut in two.
_MARKER = re.compile(r"(?im)^[ \t>*#_]*(?:final[ \t]+)?answer[ \t]*\**[ \t]*:[ \t*_]*|<ANSWER>[ \t]*:[ \t]*")
_CITE = r"\[\d{1,3}(?:\s*[,;]\s*\d{1,3})*\]"
_ANY_CITE = re.compile(_CITE)
# In code, x[1] is indexing: only a bracketed number after whitespace (or at the start) is a citation.
_LOOSE_CITE = re.compile(r"(?:(?<=\s)|^)" + _CITE)
_QUOTE_MARKS = re.compile(r"##(?:begin|end)_quote##")
_QUOTED = re.compile(r"##begin_quote##.*?##end_quote##", re.S)
_FENCE = re.compile(r"```[\w+-]*")
_LABEL_WORD = re.compile(r"\b(yes|no|maybe)\b", re.I)
_EDGE_CHARS = string.whitespace + "\"'`*_.,;:!?\u201c\u201d\u2018\u2019"


def _clean(text: str, answer_type: str) -> str:
    """Drop quote markers, code fences and citations; collapse whitespace; trim edge punctuation."""
    text = _FENCE.sub(" ", _QUOTE_MARKS.sub(" ", text))
    if answer_type == "api_call":
        text = " ".join(_LOOSE_CITE.sub(" ", text).split())
        return text.strip(string.whitespace + "`").rstrip(".,;").strip()
    text = " ".join(_ANY_CITE.sub(" ", text).split())
    return text.strip(_EDGE_CHARS)


_ABSTAIN_CLEAN = _clean(ABSTAIN_ANSWER, "span")


def extract_answer(output: str, answer_type: str = "span") -> str:
    """The answer stated by ``output``: the text after the last answer marker (the whole output when there
    is none), without citations or quote markers. ``label`` answers map to yes / no / maybe ("" if none);
    ``api_call`` answers keep the code as written, whitespace normalised. An abstention is returned as the
    abstention sentence whatever the type, so it is never mistaken for an empty or partial answer."""
    markers = list(_MARKER.finditer(output))
    body = output[markers[-1].end() :] if markers else output
    if _clean(body, "span") == _ABSTAIN_CLEAN:
        return _ABSTAIN_CLEAN
    if answer_type == "label":
        # Prefer the label after the marker; otherwise the first one the model wrote itself (not one
        # inside quoted evidence).
        for scope in (body if markers else "", _QUOTED.sub(" ", output)):
            m = _LABEL_WORD.search(scope)
            if m:
                return m.group(1).lower()
        return ""
    return _clean(body, answer_type)


# --- SQuAD scores: the official v1.1 evaluation script's normalisation, EM and token F1 -------------

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise_answer(s: str) -> str:
    """Lowercase, drop punctuation and articles, collapse whitespace: SQuAD v1.1's ``normalize_answer``, for
    exact match and token F1 only (questions are keyed by ``curation.dedupe.normalise_question``, text is
    matched by ``curation.verify.normalise_for_matching``)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _golds(answers: str | Sequence[str]) -> list[str]:
    return [answers] if isinstance(answers, str) else list(answers)


def exact_match(prediction: str, answers: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    pred = normalise_answer(prediction)
    return float(any(pred == normalise_answer(g) for g in _golds(answers)))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answers: str | Sequence[str]) -> float:
    """SQuAD token F1, the best over the gold answers (0.0 when there are none)."""
    pred = normalise_answer(prediction).split()
    return max((_f1(pred, normalise_answer(g).split()) for g in _golds(answers)), default=0.0)


# --- API calls: Gorilla-style AST sub-tree match ------------------------------------------------------

_CALL_START = re.compile(r"(?<![\w.])[A-Za-z_][\w.]*\s*\(")
_KWARG = re.compile(r"([A-Za-z_]\w*)\s*=(?!=)\s*(.*)", re.S)


@dataclass
class _Call:
    name: str
    args: list[str]  # each value as ast.dump, so 'x' and "x" compare equal
    kwargs: dict[str, str]


def _scan(text: str, start: int, stop: str) -> int | None:
    """Index of the first ``stop`` character at nesting depth 0 from ``start``, skipping string literals;
    a closing bracket that ends the enclosing group also stops the scan."""
    depth, quote, i = 0, "", start
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif depth == 0 and ch in stop:
            return i
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                return i
        i += 1
    return None


def _value(source: str) -> str:
    try:
        return ast.dump(ast.parse(source.strip(), mode="eval").body)
    except SyntaxError:
        return " ".join(source.split())


def _calls(text: str) -> Iterator[_Call]:
    """Every call written in ``text``, wherever it sits (prose, code fences, an assignment). Arguments are
    split by hand rather than by ``ast.parse`` of the whole call, because APIBench's own gold calls are not
    always valid Python (``load(repo_or_dir='x', 'meal_v2', model='y')``); Gorilla's tree-sitter parser is
    equally forgiving."""
    text = _FENCE.sub(" ", text)
    for m in _CALL_START.finditer(text):
        end = _scan(text, m.end(), ")")
        if end is None or text[end] != ")":
            continue
        call = _Call(name="".join(text[m.start() : m.end() - 1].split()), args=[], kwargs={})
        pos = m.end()
        while pos < end:
            stop = _scan(text, pos, ",)") or end
            part = text[pos:stop].strip()
            pos = stop + 1
            if not part or part.startswith("*"):  # *args / **kwargs cannot be compared
                continue
            if kw := _KWARG.fullmatch(part):
                call.kwargs[kw.group(1)] = _value(kw.group(2))
            else:
                call.args.append(_value(part))
        yield call


def _covers(pred: _Call, gold: _Call) -> bool:
    """Every gold argument is in the prediction with an equal value: a keyword by its name or, as Gorilla's
    checker allows, passed positionally (``torch.hub.load('repo', 'model')`` is the same call as
    ``torch.hub.load(repo_or_dir='repo', model='model')``); a positional one anywhere among the
    prediction's positional values. Extra arguments in the prediction are allowed."""
    unused = list(pred.args)
    by_value = []
    for name, value in gold.kwargs.items():
        if pred.kwargs.get(name) != value:
            by_value.append(value)
    for value in [*by_value, *gold.args]:
        if value not in unused:
            return False
        unused.remove(value)
    return True


def api_call_match(prediction: str, gold: str) -> bool:
    """True when some call in ``prediction`` has the gold call's function name and covers all its
    arguments (AST sub-tree match, as in Gorilla's evaluation)."""
    target = next(_calls(gold), None)
    if target is None:
        return " ".join(prediction.split()) == " ".join(gold.split())
    return any(c.name == target.name and _covers(c, target) for c in _calls(prediction))
