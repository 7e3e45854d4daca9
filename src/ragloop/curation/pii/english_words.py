"""Ordinary English words, for the name recognizer: "Comfort", "Patience", "Rose" or "Young" are names and
words, so such a word alone is not evidence of a person, and a name's part that is one is not replaced on
its own elsewhere in a dataset. Read from pyspellchecker's English word frequencies."""

from __future__ import annotations

import gzip
import importlib.resources
import json
import re
from dataclasses import dataclass
from functools import lru_cache

from ragloop.errors import ConfigError

# pyspellchecker's counts come from OpenSubtitles with proper nouns pushed down ("john" 6,920 against
# "comfort" 31,903). At 1,000 a word is common whatever else it is ("patience", "mercy", "hall", but not
# "nguyen" 50, "singh" 397); from 100 it is a word unless a name list holds it ("contractual" 607 and
# "acrobat" 582 are words, "lars" 934 and "liam" 694 are names).
COMMON_COUNT = 1000
RARER_COUNT = 100


@dataclass(frozen=True)
class EnglishWords:
    common: frozenset[str]
    rarer: frozenset[str]

    def level(self, key: str) -> int:
        """2 for a common word, 1 for a rarer one, 0 for none; British spellings as their American
        ("favour", "organisation", "centre")."""
        for spelling in (key, *_american(key)):
            if spelling in self.common:
                return 2
            if spelling in self.rarer:
                return 1
        return 0


def _american(key: str) -> list[str]:
    out = [re.sub(r"our(s|ed|ing)?$", r"or\1", key), re.sub(r"is(e|ed|es|ing|ation|ations)$", r"iz\1", key),
           re.sub(r"tre(s)?$", r"ter\1", key), re.sub(r"ys(e|ed|es|ing)$", r"yz\1", key),
           re.sub(r"ll(ed|ing|er)$", r"l\1", key), re.sub(r"ence$", r"ense", key)]  # fmt: skip
    return [s for s in out if s != key]


@lru_cache(maxsize=1)
def english_words() -> EnglishWords:
    """The lower-case English words counted at least RARER_COUNT times, read once (about 0.2 s).

    pyspellchecker (MIT) ships the word frequencies its spelling corrector uses, counted on the English
    OpenSubtitles 2018 corpus and cleaned by hand; only that file is read, not its corrector."""
    try:
        path = importlib.resources.files("spellchecker") / "resources" / "en.json.gz"
        counts: dict[str, int] = json.loads(gzip.decompress(path.read_bytes()))
    except (ModuleNotFoundError, FileNotFoundError) as e:  # pragma: no cover - a dependency of ragloop
        raise ConfigError(
            "PII detection needs the 'pyspellchecker' package: pip install pyspellchecker"
        ) from e
    common = frozenset(w for w, n in counts.items() if n >= COMMON_COUNT and w.isalpha())
    rarer = frozenset(w for w, n in counts.items() if RARER_COUNT <= n < COMMON_COUNT and w.isalpha())
    return EnglishWords(common, rarer)
