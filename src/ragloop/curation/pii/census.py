"""The US Census 1990 first and last names, read from the ``names`` package's data files: which words are
given names or surnames, and how common. The name recognizer counts on them to tell a name from a
capitalised word, and surrogates are drawn from them."""

from __future__ import annotations

import importlib.metadata
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ragloop.errors import ConfigError

# A name must be at least this common (percent of the 1990 population) to count: the long tail of the
# lists holds words such as "State", "Union" or "Party" that are also someone's surname.
FIRST_NAME_MIN_FREQ = 0.002
LAST_NAME_MIN_FREQ = 0.001
# A surname this common can stand after a given name the census does not know ("Priya Patel").
COMMON_LAST_NAME_FREQ = 0.01


def fold(text: str) -> str:
    """Accents off, length kept ("Lucía Sánchez" → "Lucia Sanchez"): the census files are plain ASCII,
    and a name is the same name with or without its accents."""
    return "".join(_fold_char(c) for c in text)


@lru_cache(maxsize=4096)
def _fold_char(c: str) -> str:
    base = "".join(b for b in unicodedata.normalize("NFKD", c) if not unicodedata.combining(b))
    return base if len(base) == 1 else c


@dataclass(frozen=True)
class NameLists:
    """Census frequencies (percent), keyed by the upper-case ASCII name as the files spell it."""

    female: dict[str, float]
    male: dict[str, float]
    last: dict[str, float]

    def _first_freq(self, token: str) -> float:
        key = fold(token).upper()
        return max(self.female.get(key, 0.0), self.male.get(key, 0.0))

    def is_first(self, token: str) -> bool:
        """A census first name, or a hyphenated one starting with one ("Jean-Luc"); not a possessive."""
        if re.search(r"['’]s$", token):
            return False
        return self._first_freq(re.split(r"[-'’]", token)[0]) >= FIRST_NAME_MIN_FREQ

    def last_freq(self, token: str) -> float:
        return self.last.get(re.sub(r"['’]", "", fold(token)).upper(), 0.0)  # the files write OBRIEN

    def is_last(self, token: str) -> bool:
        return self.last_freq(token) >= LAST_NAME_MIN_FREQ

    def is_common_last(self, token: str) -> bool:
        """Common enough that the word is more likely a surname than anything else ("Hall", "Park")."""
        return self.last_freq(token) >= COMMON_LAST_NAME_FREQ

    def role(self, token: str) -> str | None:
        """The pool a surrogate for this word is drawn from, by census frequency: female or male first
        names, or surnames; None for a word the census does not know."""
        key = fold(token).upper()
        f, m, last = self.female.get(key, 0.0), self.male.get(key, 0.0), self.last.get(key, 0.0)
        if not (f or m or last):
            return None
        if max(f, m) > last:
            return "female" if f >= m else "male"
        return "last"


@lru_cache(maxsize=1)
def census_names() -> NameLists:
    """Read the three frequency files shipped by the ``names`` package (MIT; the data are the US Census
    Bureau's 1990 name files, a public-domain US government work). The files are read directly: the
    package's own code, which draws random names, is never run."""
    try:
        dist = importlib.metadata.distribution("names")
    except importlib.metadata.PackageNotFoundError as e:
        raise ConfigError("PII detection needs the 'names' package: pip install names==0.3.0") from e

    def read(filename: str) -> dict[str, float]:
        path = Path(str(dist.locate_file(f"names/{filename}")))
        out: dict[str, float] = {}
        for line in path.read_text(encoding="ascii").splitlines():
            parts = line.split()
            if len(parts) == 4:
                out[parts[0]] = float(parts[1])
        return out

    return NameLists(read("dist.female.first"), read("dist.male.first"), read("dist.all.last"))
