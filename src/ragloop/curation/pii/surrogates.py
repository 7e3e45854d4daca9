"""Surrogates: the realistic stand-in for each value found (a census name, an example.org email, an IBAN
with valid check digits…), drawn from an HMAC of the value so the same value always gets the same one.
ExampleSurrogates keeps them consistent across the fields of one example."""

from __future__ import annotations

import hashlib
import re
import string
from typing import TYPE_CHECKING

from ragloop.curation.pii.name_cues import NAME_TOKEN, PARTICLES, TITLES
from ragloop.curation.pii.name_lists import name_key
from ragloop.curation.pii.pattern_recognizers import ROMANCE_STREET, STREET_TYPE

if TYPE_CHECKING:
    from ragloop.curation.pii.anonymizer import Anonymizer


class ExampleSurrogates:
    """The surrogates of one example: one per value (whatever its layout in each mention) and one per
    word of a name, none equal to an original of the example or to another value's surrogate, and —
    with a vault — none already standing for a different original."""

    def __init__(self, anonymizer: Anonymizer, originals: set[str]) -> None:
        self.a = anonymizer
        self.originals = originals | {w for o in originals for w in NAME_TOKEN.findall(o)}
        self.names: dict[str, str] = {}  # word of a name, as name_key spells it → its surrogate
        self.values: dict[tuple[str, str], str] = {}  # (type, normalised value) → canonical surrogate
        self.rendered: dict[str, tuple[str, str]] = {}  # surrogate as written → (original, type)

    def surrogate(self, entity_type: str, mention: str) -> str:
        if entity_type == "PERSON":
            out, pos = [], 0
            tokens = list(NAME_TOKEN.finditer(mention))
            for i, m in enumerate(tokens):
                out.append(
                    mention[pos : m.start()] + self._name_word(m.group(), is_last=i == len(tokens) - 1)
                )
                pos = m.end()
            return "".join(out) + mention[pos:]
        key = (entity_type, _normalise_value(entity_type, mention))
        if key not in self.values:
            taken = set(self.values.values())
            for attempt in range(50):
                canonical = self._canonical(entity_type, key[1], mention, attempt)
                written = self._render(entity_type, mention, canonical)
                if canonical not in taken and written not in self.originals and self._free(written, mention):
                    break
            self.values[key] = canonical
        written = self._render(entity_type, mention, self.values[key])
        self.rendered[written] = (mention, entity_type)
        return written

    def _free(self, pseudonym: str, original: str) -> bool:
        vault = self.a.vault
        clash = vault.original_of(pseudonym) if vault else None
        return clash is None or clash == original

    def _name_word(self, word: str, *, is_last: bool) -> str:
        """One word of a name → a census name of the same role (female or male first name, surname),
        the same every time within the example ("Berg", "BERG") and, for a given secret, everywhere. A
        word the census does not know takes its role from ``_role``."""
        if len(word) == 1 or word.lower() in PARTICLES or word.lower() in TITLES:
            return word
        key = name_key(word)
        if key not in self.names:
            role = self.a.names.role(word) or self._role(word, key, is_last=is_last)
            if role == "first":
                role = ("female", "male")[self.a.draws("PERSON", key).below(2)]
            taken = {n.lower() for n in self.names.values()} | {o.lower() for o in self.originals}
            for attempt in range(50):
                candidate = self.a.draws("PERSON", f"{role}:{key}", attempt).choice(self.a._pools[role])
                if candidate.lower() not in taken and self._free(candidate.capitalize(), word):
                    break
            self.names[key] = candidate.capitalize()
        written = self.names[key].upper() if word.isupper() and len(word) > 1 else self.names[key]
        self.rendered[written] = (word, "PERSON")
        return written

    def _role(self, word: str, key: str, *, is_last: bool) -> str:
        """For a word the census does not know: its role where the dataset's full names show it (a name
        alone in one example gets the pseudonym it has in another's full name), else where some origin's
        list has it as only a given name or only a surname, else its place: the last word is the
        surname."""
        if key in self.a._roles:
            return self.a._roles[key]
        origins = self.a.recognizer.origins
        if origins is not None:
            given, family = key in origins.given, key in origins.family
            if given != family:
                return "first" if given else "last"
        return "last" if is_last else "first"

    def _canonical(self, entity_type: str, key: str, mention: str, attempt: int) -> str:
        draws = self.a.draws(entity_type, key, attempt)
        if entity_type == "PHONE_NUMBER":
            return _keep_format(key, draws, keep_digits=2)  # the country or area code stays
        if entity_type == "CREDIT_CARD":
            return _card(key, draws)
        if entity_type == "IBAN_CODE":
            return _iban(key, draws)
        if entity_type == "EMAIL_ADDRESS":
            return self._email(key, draws)
        if entity_type == "IP_ADDRESS":
            return _ip(key, draws)
        if entity_type == "URL":
            return f"https://example.org/{draws.below(16**8):08x}"
        if entity_type == "DATE_OF_BIRTH":
            return _date(mention, draws)
        if entity_type == "STREET_ADDRESS":
            return self._address(mention, draws)
        return _keep_format(mention, draws)  # identifiers: same layout, checksum not kept

    @staticmethod
    def _render(entity_type: str, mention: str, canonical: str) -> str:
        if entity_type in ("PHONE_NUMBER", "CREDIT_CARD"):
            return _pour(mention, canonical)
        if entity_type == "IBAN_CODE" and re.search(r"\s", mention.strip()):
            return " ".join(canonical[i : i + 4] for i in range(0, len(canonical), 4))
        return canonical

    def _email(self, key: str, draws: Draws) -> str:
        """An example.org address; when its local part is made of the words of a name found in the
        example ("anna.berg@…"), it is made of their surrogates, so the text stays coherent."""
        local, _, _ = key.partition("@")
        words = {w: s.lower() for w, s in self.names.items()}
        pieces = re.split(r"([._-])", local)
        if any(p.isalpha() and p in words for p in pieces):
            local = "".join(
                words.get(p, p if not p.isalpha() else draws.choice(self.a._pools["last"]).lower())
                for p in pieces
            )
            local = re.sub(r"\d", lambda _: draws.choice(string.digits), local)
        else:
            first = draws.choice(self.a._pools[draws.choice(["female", "male"])])
            local = f"{first}.{draws.choice(self.a._pools['last'])}".lower()
        return f"{local}@{draws.choice(['example.org', 'example.com', 'example.net'])}"

    def _address(self, mention: str, draws: Draws) -> str:
        """Street and place names from the census surnames, numbers and postcode letters redrawn; street
        words ("Road", "rue", "-straße") kept, so the surrogate still reads as an address."""
        pool = self.a._pools["last"]

        def word(m: re.Match[str]) -> str:
            w = m.group()
            if _STREET_WORD.match(w) or not w[0].isupper():
                return w
            if w.isupper() and len(w) <= 3:  # postcode letters, state code
                return _keep_format(w, draws)
            suffix = _STREET_SUFFIX.search(w)
            return draws.choice(pool).capitalize() + (suffix.group(1) if suffix else "")

        out = re.sub(r"[^\W\d_]+", word, mention)
        # House numbers and postcodes: random digits, no leading zero.
        return re.sub(r"\d+", lambda m: str(1 + draws.below(9)) + _keep_format(m.group()[1:], draws), out)

    def vault_entries(self) -> dict[str, tuple[str, str]]:
        return dict(self.rendered)


class Draws:
    """Deterministic integers from an HMAC digest (SHAKE-256 stream): the same value and secret give the
    same surrogate on every machine and Python version."""

    def __init__(self, digest: bytes) -> None:
        self._stream = hashlib.shake_256(digest).digest(256)
        self._pos = 0

    def below(self, n: int) -> int:
        if self._pos + 8 > len(self._stream):
            self._stream = hashlib.shake_256(self._stream).digest(256)
            self._pos = 0
        chunk = self._stream[self._pos : self._pos + 8]
        self._pos += 8
        return int.from_bytes(chunk, "big") % n

    def choice(self, options: list[str] | str) -> str:
        return options[self.below(len(options))]


def _keep_format(value: str, draws: Draws, keep_digits: int = 0) -> str:
    """Same length and layout: each digit, upper- and lower-case letter replaced by one of its kind (the
    first ``keep_digits`` digits kept, e.g. a phone number's country code)."""
    out, digits = [], 0
    for c in value:
        if c.isdigit():
            out.append(c if digits < keep_digits else draws.choice(string.digits))
            digits += 1
        elif c.isupper():
            out.append(draws.choice(string.ascii_uppercase))
        elif c.islower():
            out.append(draws.choice(string.ascii_lowercase))
        else:
            out.append(c)
    return "".join(out)


def _pour(mention: str, chars: str) -> str:
    """The mention's layout ("+44 20 7946 0958") filled with the surrogate's digits and letters."""
    it = iter(chars)
    return "".join(next(it) if c.isalnum() else c for c in mention)


def _iban(compact: str, draws: Draws) -> str:
    """Same country and length, random account, valid check digits (ISO 13616 mod 97)."""
    country, bban = compact[:2], _keep_format(compact[4:], draws)
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{country}{98 - int(numeric) % 97:02d}{bban}"


def _card(digits: str, draws: Draws) -> str:
    """Same network digit and length, random number, valid Luhn check digit."""
    body = digits[0] + "".join(draws.choice(string.digits) for _ in digits[1:-1])
    total = 0
    for i, d in enumerate(reversed(body)):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return body + str((10 - total % 10) % 10)


def _ip(value: str, draws: Draws) -> str:
    if ":" in value:  # IPv6: the documentation prefix 2001:db8::/32 (RFC 3849)
        return f"2001:db8::{draws.below(0xFFFF):x}"
    net = draws.choice(["192.0.2", "198.51.100", "203.0.113"])  # IPv4 documentation ranges (RFC 5737)
    return f"{net}.{1 + draws.below(254)}"


_MONTH_NAMES = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def _date(value: str, draws: Draws) -> str:
    def number(m: re.Match[str]) -> str:
        if len(m.group()) == 4:
            return str(1940 + draws.below(66))
        # 01-12 reads as a valid day and a valid month, whichever order the original used.
        return f"{1 + draws.below(12):0{len(m.group())}d}"

    def month(m: re.Match[str]) -> str:
        name = draws.choice(_MONTH_NAMES)
        return name[: len(m.group())] if len(m.group()) <= 4 else name

    value = re.sub(r"\d+", number, value)
    return re.sub(r"(?i)\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*", month, value)


def _normalise_value(entity_type: str, value: str) -> str:
    """What makes two mentions one value: "+44 20 7946 0958" and "+442079460958" are one phone."""
    if entity_type == "EMAIL_ADDRESS":
        return value.strip().lower()
    if entity_type in ("PHONE_NUMBER", "CREDIT_CARD"):
        return re.sub(r"\D", "", value)
    if entity_type == "IBAN_CODE":
        return re.sub(r"\W", "", value).upper()
    return " ".join(value.split())


_STREET_WORD = re.compile(STREET_TYPE + r"$|" + ROMANCE_STREET + r"$", re.IGNORECASE)
_STREET_SUFFIX = re.compile(
    r"(straße|strasse|weg|gasse|platz|allee|damm|ufer|gracht|laan|straat|plein|kade|gatan|vägen)$"
)
