"""Given and family names of many origins, for the name recognizer: the census lists (census.py) are
American, so names common in Ireland, Turkey, Ghana, Nigeria, Vietnam, India, Poland, Japan… come from
the person providers of Faker, one list per locale. Only names written in Latin letters are read: names in
other scripts are out of scope (docs/curation.md)."""

from __future__ import annotations

import importlib
import pkgutil
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from ragloop.errors import ConfigError

# Letters that Unicode does not decompose into a base letter and an accent, spelt as an ASCII email or a
# passport's machine-readable line spells them ("Yılmaz" → yilmaz, "Øyvind" → oyvind, "Łukasz" → lukasz).
_ASCII_LETTERS = str.maketrans(
    {"ı": "i", "ø": "o", "ł": "l", "đ": "d", "ß": "ss", "æ": "ae", "œ": "oe", "þ": "th", "ð": "d", "ħ": "h",
     "Ø": "O", "Ł": "L", "Đ": "D", "Æ": "AE", "Œ": "OE", "Þ": "TH", "Ð": "D", "Ħ": "H", "’": "'"}
)  # fmt: skip


def name_key(token: str) -> str:
    """How a name is looked up and compared: lower case, accents off, letters Unicode keeps whole spelt in
    ASCII ("Nguyễn" → nguyen, "Yılmaz" → yilmaz). Its length may differ from the token's."""
    base = "".join(c for c in unicodedata.normalize("NFKD", token) if not unicodedata.combining(c))
    return base.translate(_ASCII_LETTERS).lower()


@dataclass(frozen=True)
class OriginNames:
    """Name keys (``name_key``) that some locale's list holds as a given name, or as a family name; and
    place names (countries, states, cities: "puerto rico", "lagos"), which look like unknown names too."""

    given: frozenset[str]
    family: frozenset[str]
    places: frozenset[str]
    locales: tuple[str, ...]


# The attributes of a Faker person provider that hold names, by role. Romanised lists are the Latin
# spellings of Chinese and Japanese names; middle names (Vietnamese "Thị", "Văn") are given names.
_GIVEN = ("first_names", "first_names_female", "first_names_male", "first_names_nonbinary",
          "first_names_unisex", "first_romanized_names", "middle_names")  # fmt: skip
_FAMILY = ("last_names", "last_names_female", "last_names_male", "last_names_unisex", "male_last_names",
           "unisex_last_names", "last_names_without_suffix", "last_romanized_names")  # fmt: skip


@lru_cache(maxsize=1)
def origin_names() -> OriginNames:
    """Read every Faker locale's person provider once (about 0.3 s) and keep its Latin-script names.

    Faker (MIT) compiles each locale's lists from that country's published name statistics and common
    usage; only the lists are read, Faker's random generator is never run. A locale whose names are in
    another script (ar_AA, el_GR, ru_RU, ko_KR…) adds nothing, so Arabic, Greek or Korean names count only
    where another locale spells them in Latin letters (en_PK, fr_DZ, zh_TW's romanised lists…)."""
    try:
        import faker.providers.person as person
    except ImportError as e:  # pragma: no cover - a dependency of ragloop
        raise ConfigError("PII detection needs the 'faker' package: pip install faker") from e
    given: set[str] = set()
    family: set[str] = set()
    locales = []
    for module in pkgutil.iter_modules(person.__path__):
        provider = importlib.import_module(f"{person.__name__}.{module.name}").Provider
        read = False
        for attrs, into in ((_GIVEN, given), (_FAMILY, family)):
            for attr in attrs:
                names = getattr(provider, attr, ())
                for name in names if isinstance(names, (tuple, list, dict, set, frozenset)) else ():
                    for word in str(name).split():
                        if _latin(word):
                            into.update(_keys(word))
                            read = True
        if read:
            locales.append(module.name)
    return OriginNames(frozenset(given), frozenset(family), _places(), tuple(sorted(locales)))


_PLACES = ("countries", "cities", "city_names", "real_city_names", "states", "provinces", "regions", "towns",
           "places", "luzon_provinces", "visayas_provinces", "mindanao_provinces")  # fmt: skip


def _places() -> frozenset[str]:
    """Faker's address providers' real place names, in Latin letters, as ``name_key`` of the whole name."""
    import faker.providers.address as address

    out: set[str] = set()
    for module in pkgutil.iter_modules(address.__path__):
        provider = importlib.import_module(f"{address.__name__}.{module.name}").Provider
        for attr in _PLACES:
            places = getattr(provider, attr, ())
            for place in places if isinstance(places, (tuple, list)) else ():
                if isinstance(place, str) and _latin(place):
                    out.add(name_key(place))
    return frozenset(out)


def _keys(word: str) -> set[str]:
    """A hyphenated name under its whole spelling and each part ("Opoku-Agyemang")."""
    key = name_key(word.strip(".,"))
    return {k for k in (key, *key.split("-")) if len(k) > 1 and not any(c.isspace() for c in k)}


def _latin(word: str) -> bool:
    return all(not c.isalpha() or "LATIN" in unicodedata.name(c, "") for c in word)
