"""Names evidenced by identifiers (issue 15): a capitalised name standing right beside an email address or
a phone number of the same sentence ("Adaeze Okafor <a.okafor@…>", "call Niamh Breathnach on +353 …"),
and a name that an email's local part spells once accents are off ("aoife.nibhriain@…" for "Aoife Ní
Bhriain"). They run after the analyzer, on its EMAIL_ADDRESS and PHONE_NUMBER findings."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from typing import TYPE_CHECKING

from ragloop.curation.pii.entities import Finding
from ragloop.curation.pii.name_cues import NAME_TOKEN, PARTICLES, THING_BEFORE, is_org_word
from ragloop.curation.pii.name_lists import name_key

if TYPE_CHECKING:
    from ragloop.curation.pii.name_recognizer import CensusNameRecognizer

IDENTIFIERS = ("EMAIL_ADDRESS", "PHONE_NUMBER")
# What may stand between a name and the identifier beside it: punctuation and a word saying how to reach
# them ("Niamh Breathnach <…>", "…, tel. …", "… at …", "… on …"); never a sentence end.
_GAP_BEFORE = re.compile(
    r"[ \t]*(?:[,:;/|–—-][ \t]*)?(?:(?:at|on|via|tel|phone|mobile|mob|cell|email|e-mail|mail)\.?:?[ \t]+)?[(<\[]?[ \t]*",
    re.IGNORECASE,
)
_GAP_AFTER = re.compile(r"[ \t]*[)>\]]?[ \t]*(?:[,:;/|–—-][ \t]*)?[(\[]?[ \t]*")
_WINDOW = 160  # characters either side of an email in which a name it spells is looked for
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)|\n")


def names_from_identifiers(
    text: str, findings: list[Finding], recognizer: CensusNameRecognizer
) -> list[Finding]:
    """PERSON findings that the identifiers among ``findings`` give evidence of, overlapping none of them."""
    out: list[Finding] = []
    for f in findings:
        if f.entity_type not in IDENTIFIERS:
            continue
        candidates = list(_beside(text, f, recognizer))
        if f.entity_type == "EMAIL_ADDRESS":
            candidates += _spelt_by_email(text, f, recognizer)
        for start, end, score in candidates:
            taken = findings + out
            if all(end <= g.start or start >= g.end for g in taken):
                out.append(Finding("PERSON", start, end, score))
    return out


def _tokens(text: str, start: int, end: int) -> list[re.Match[str]]:
    return list(NAME_TOKEN.finditer(text, start, end))


def _name_runs(text: str, start: int, end: int) -> Iterator[list[re.Match[str]]]:
    """Runs of capitalised tokens (particles allowed inside) separated by one space, within [start, end)."""
    run: list[re.Match[str]] = []
    for m in _tokens(text, start, end):
        word = m.group()
        joined = run and text[run[-1].end() : m.start()] == " "
        if word[0].isupper() or (run and word.lower() in PARTICLES):
            if run and not joined:
                yield run
                run = []
            run.append(m)
        elif run:
            yield run
            run = []
    if run:
        yield run


def _sentence(text: str, start: int, end: int) -> tuple[int, int]:
    """The sentence around [start, end): from after the previous sentence end to the next one."""
    left = max((m.end() for m in _SENTENCE_END.finditer(text, max(0, start - _WINDOW), start)), default=0)
    left = max(left, start - _WINDOW)
    right = _SENTENCE_END.search(text, end, end + _WINDOW)
    return left, right.start() if right else min(len(text), end + _WINDOW)


def _beside(text: str, f: Finding, recognizer: CensusNameRecognizer) -> Iterator[tuple[int, int, float]]:
    """A name right before or right after the identifier, in its sentence."""
    left, right = _sentence(text, f.start, f.end)
    before = [run for run in _name_runs(text, left, f.start)]
    if before:
        run = _trim(before[-1], recognizer)
        gap = _GAP_BEFORE.fullmatch(text, run[-1].end(), f.start) if run else None
        if run and gap and _reads_as_name(text, run, recognizer):
            yield run[0].start(), run[-1].end(), 0.7
    gap = _GAP_AFTER.match(text, f.end, right)
    after = next(_name_runs(text, gap.end(), right), None) if gap else None
    if after and after[0].start() == gap.end():
        run = _trim(after, recognizer)
        if run and _reads_as_name(text, run, recognizer):
            yield run[0].start(), run[-1].end(), 0.7


def _trim(run: list[re.Match[str]], recognizer: CensusNameRecognizer) -> list[re.Match[str]]:
    """Drop ordinary words in front ("Contact Niamh Breathnach", "Please call Kofi") and after, and
    particles at either end."""
    run = list(run)
    while run and (
        run[0].group().lower() in PARTICLES or _word_not_name(run[0].group(), recognizer, given=True)
    ):
        run.pop(0)
    while run and (
        run[-1].group().lower() in PARTICLES or _word_not_name(run[-1].group(), recognizer, given=False)
    ):
        run.pop()
    return run[-4:]


def _word_not_name(token: str, recognizer: CensusNameRecognizer, *, given: bool) -> bool:
    if not recognizer.ordinary(token):
        return False
    return not (recognizer.given(token) if given else recognizer.family(token)) or is_org_word(token)


def _reads_as_name(text: str, run: list[re.Match[str]], recognizer: CensusNameRecognizer) -> bool:
    """Two words or more that read as a name, or one that a list knows as a name; not an organisation or
    a place ("Contoso Ltd <…>", "the Lagos office on …")."""
    tokens = [m.group() for m in run]
    names = [t for t in tokens if t.lower() not in PARTICLES]
    word_before = re.search(r"([^\W\d_]+)[ \t]+$", text[max(0, run[0].start() - 30) : run[0].start()])
    if word_before and word_before.group(1).lower() in THING_BEFORE:
        return False
    if len(names) == 1:
        token = names[0]
        return recognizer.namelike(token) and (recognizer.given(token) or recognizer.family(token))
    return recognizer.plausible(tokens, by=False)


def _spelt_by_email(
    text: str, f: Finding, recognizer: CensusNameRecognizer
) -> Iterator[tuple[int, int, float]]:
    """Capitalised runs near the email whose words its local part spells ("e.yilmaz" for "Emre Yılmaz",
    "okafor.c" for "Chidi Okafor", "nibhriain" for "Ní Bhriain"), widened to the name's other words."""
    local = text[f.start : f.end].split("@", 1)[0]
    letters = re.sub(r"[^a-z]", "", name_key(local))
    pieces = set(re.split(r"[^a-z]+", name_key(local)))
    if len(letters) < 3:
        return
    left, right = max(0, f.start - _WINDOW), min(len(text), f.end + _WINDOW)
    for run in _name_runs(text, left, right):
        if run[0].start() >= f.start and run[-1].end() <= f.end:
            continue  # the address itself
        keys = [name_key(m.group()) for m in run]
        used = _spells(letters, keys)
        if used is None:
            used = _spells(letters, keys[::-1])
            used = None if used is None else {len(keys) - 1 - i for i in used}
        if not used:  # one word of the address alone: "Koskivaara noticed" beside ilmari.koskivaara@…
            used = {i for i, key in enumerate(keys) if len(key) >= 3 and key in pieces}
        if not used:
            continue
        first, last = min(used), max(used)
        # The name's other words beside the matched ones: "Emre" before "Yılmaz" for "yilmaz@…".
        while first > 0 and recognizer.namelike(run[first - 1].group()):
            first -= 1
        while last + 1 < len(run) and recognizer.namelike(run[last + 1].group()):
            last += 1
        tokens = [m.group() for m in run[first : last + 1]]
        names = [t for t in tokens if t.lower() not in PARTICLES]
        if not names or (len(names) == 1 and not recognizer.namelike(names[0])):
            continue  # "Sales <sales@…>"
        if len(names) > 1 and not any(map(recognizer.namelike, names)):
            continue  # "Customer Service <customer.service@…>"
        if last + 1 < len(run) and is_org_word(run[last + 1].group()):
            continue
        yield run[first].start(), run[last].end(), 0.8


def _spells(letters: str, keys: list[str]) -> set[int] | None:
    """Indices of the keys whose full spelling or initial, in order, make exactly ``letters`` (other keys
    skipped), at least one spelt in full with three letters or more; None if none do."""
    keys = [re.sub(r"[^a-z]", "", k) for k in keys]

    @cache
    def walk(i: int, j: int) -> tuple[int, ...] | None:
        if i == len(letters):
            return ()
        if j == len(keys):
            return None
        key = keys[j]
        if key and len(key) >= 2 and letters.startswith(key, i):
            rest = walk(i + len(key), j + 1)
            if rest is not None:
                return (j, *rest)
        if key and letters[i] == key[0]:
            rest = walk(i + 1, j + 1)
            if rest is not None:
                return (-j - 1, *rest)  # an initial
        return walk(i, j + 1)

    found = walk(0, 0)
    if not found:
        return None
    full = [j for j in found if j >= 0]
    if not any(len(keys[j]) >= 3 for j in full):
        return None
    return {j if j >= 0 else -j - 1 for j in found}
