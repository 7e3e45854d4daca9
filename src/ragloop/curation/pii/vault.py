"""The vault: the pseudonym → original mapping, kept only when asked for (``vault_path``), so that
``Anonymizer.deanonymize`` can undo the pseudonyms and no new surrogate reuses a pseudonym it maps to
another original."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path


class Vault:
    """Pseudonym → original, in an SQLite file only its owner can read. Opt-in: it holds the very data
    anonymisation removes, so it belongs on a protected disk, never beside the dataset."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.touch(mode=0o600)
        self.db = sqlite3.connect(path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS vault (pseudonym TEXT PRIMARY KEY, original TEXT NOT NULL, "
            "entity_type TEXT NOT NULL)"
        )
        self._pattern: re.Pattern[str] | None = None

    def original_of(self, pseudonym: str) -> str | None:
        row = self.db.execute("SELECT original FROM vault WHERE pseudonym = ?", (pseudonym,)).fetchone()
        return row[0] if row else None

    def add(self, entries: dict[str, tuple[str, str]]) -> None:
        """Record pseudonym → (original, entity type); a pseudonym already recorded keeps its original."""
        if entries:
            rows = [(p, o, t) for p, (o, t) in entries.items()]
            self.db.executemany("INSERT OR IGNORE INTO vault VALUES (?, ?, ?)", rows)
            self.db.commit()
            self._pattern = None

    def deanonymize(self, text: str) -> str:
        rows = dict(self.db.execute("SELECT pseudonym, original FROM vault").fetchall())
        if not rows:
            return text
        if self._pattern is None:
            alternatives = "|".join(re.escape(p) for p in sorted(rows, key=len, reverse=True))
            self._pattern = re.compile(rf"(?<![\w@.])(?:{alternatives})(?![\w@])")
        return self._pattern.sub(lambda m: rows[m.group()], text)

    def close(self) -> None:
        self.db.close()
