"""Stage 1, first step: read a file (or an upload) into documents made of heading-pathed sections.

Every format ends up in the same shape, ``LoadedDocument`` (full text + sections with heading paths and
offsets), so the chunker and everything after it never look at file formats. Each format reader only yields
``(heading path, paragraph)`` blocks; ``_build_document`` joins them and computes the offsets.

Formats (by suffix):
- ``.txt``: paragraphs split at blank lines, no headings.
- ``.md`` / ``.markdown``: ATX (``## Title``) and setext (``Title`` over ``===``) headings build the path.
- ``.html`` / ``.htm``: ``h1``-``h6`` build the path; script, style and nav are dropped.
- ``.pdf``: one section per page ("Page 3"), from the text layer (no OCR).
- ``.json`` / ``.jsonl``: a list of records (one document each, text from ``[ingest] json_text_fields``), or
  one nested object (chapters -> articles -> points ...) walked generically: dicts with a title are headings.
- ``.xml``: an element whose first child is a title-like element (``title``, ``head``, ``TI.ART`` ...) is a
  heading; the text of the other elements is the body.
"""

from __future__ import annotations

import codecs
import io
import itertools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ragloop.config import IngestSettings, LimitSettings
from ragloop.errors import IngestError

SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".json", ".jsonl", ".xml"}
)

HeadingPath = tuple[str, ...]
Block = tuple[HeadingPath, str]  # (heading path, one paragraph)


@dataclass(frozen=True)
class Section:
    """A run of body text under one heading path (outermost heading first; headings not repeated)."""

    path: tuple[str, ...]
    text: str
    char_start: int  # offset of ``text`` within LoadedDocument.text


@dataclass(frozen=True)
class LoadedDocument:
    """One document of a file: the whole file, or one record of a JSON list / JSONL file."""

    doc_key: str  # "" for a whole-file document, else the record id
    title: str
    text: str  # the sections' texts joined by "\n\n"
    sections: tuple[Section, ...]


def load_file(path: Path, settings: IngestSettings, limits: LimitSettings) -> list[LoadedDocument]:
    """Read one file into documents; raise IngestError saying what is wrong and what to do about it."""
    _suffix(path.name)  # refuse an unsupported file before touching it
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise IngestError(f"{path}: cannot be read ({exc.strerror or exc}).") from exc
    if not path.is_file():
        raise IngestError(f"{path}: is not a regular file.")
    _check_size(path.name, size, limits)  # before reading: a huge file must not be loaded into memory
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IngestError(f"{path}: cannot be read ({exc.strerror or exc}).") from exc
    return _load(path.name, data, settings)


def load_bytes(
    name: str, data: bytes, settings: IngestSettings, limits: LimitSettings
) -> list[LoadedDocument]:
    """Same as ``load_file`` for an upload; ``name`` only gives the suffix and title, never a path."""
    name = PurePosixPath(name.replace("\\", "/")).name or "upload"
    _suffix(name)
    _check_size(name, len(data), limits)
    return _load(name, data, settings)


def _suffix(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise IngestError(
            f"{name}: unsupported file type {suffix or '(no suffix)'!r}; "
            f"supported: {', '.join(sorted(SUPPORTED_SUFFIXES))}. Convert it to one of these first."
        )
    return suffix


def _check_size(name: str, size: int, limits: LimitSettings) -> None:
    if size > limits.max_file_bytes:
        raise IngestError(
            f"{name}: {size:,} bytes is over the limit of {limits.max_file_bytes:,} bytes; "
            "split the file, or raise [limits] max_file_bytes in ragloop.toml."
        )


def _load(name: str, data: bytes, settings: IngestSettings) -> list[LoadedDocument]:
    suffix = _suffix(name)
    title = PurePosixPath(name).stem
    if not data.strip():
        raise IngestError(f"{name}: the file is empty (or only whitespace); there is nothing to ingest.")
    reader = _READERS[suffix]
    try:
        return reader(data, title, settings)
    except IngestError as exc:  # readers say what is wrong; the file name is added once, here
        raise IngestError(f"{name}: {exc}") from exc
    except RecursionError as exc:
        raise IngestError(f"{name}: the document is nested too deeply to read.") from exc


# Shared helpers -------------------------------------------------------------------------------------------


def _clean(text: str) -> str:
    """Collapse all whitespace runs (newlines included) to one space: paragraphs are the only structure."""
    return " ".join(text.split())


def _build_document(doc_key: str, title: str, blocks: Iterable[Block]) -> LoadedDocument:
    """Group consecutive paragraphs with the same heading path into sections and compute offsets."""
    # Headings come clean from the readers (parts like "Article 17" and its title joined by two spaces).
    cleaned = ((tuple(h.strip() for h in path if h.strip()), _clean(p)) for path, p in blocks)
    sections: list[Section] = []
    offset = 0
    for path, group in itertools.groupby((b for b in cleaned if b[1]), key=lambda b: b[0]):
        text = "\n\n".join(p for _, p in group)
        if sections:
            offset += 2  # the "\n\n" between sections
        sections.append(Section(path=path, text=text, char_start=offset))
        offset += len(text)
    if not sections:
        raise IngestError("no extractable text was found in it.")
    full = "\n\n".join(s.text for s in sections)
    return LoadedDocument(doc_key=doc_key, title=_clean(title), text=full, sections=tuple(sections))


def _decode_text(data: bytes) -> str:
    """Text formats must be real text: refuse binary (NUL bytes, control characters) and non-UTF-8 bytes,
    rather than ingest garbage that would poison retrieval."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise IngestError("has a UTF-16 mark but is not valid UTF-16; re-save it as UTF-8.") from exc
    else:
        if b"\x00" in data:
            raise IngestError("contains NUL bytes: it is a binary file, not text. Check the file type.")
        try:
            text = data.decode("utf-8-sig")  # also strips a UTF-8 byte order mark
        except UnicodeDecodeError as exc:
            raise IngestError(
                f"is not valid UTF-8 (bad byte at offset {exc.start}): it is binary or in another "
                "encoding; re-save it as UTF-8."
            ) from exc
    controls = len(_CONTROL.findall(text))
    if controls > max(8, len(text) // 100):
        raise IngestError(
            f"has {controls} control characters: it looks binary, not text. Check the file type."
        )
    return text


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def _paragraphs(text: str) -> list[str]:
    """Paragraphs of plain text: separated by blank lines."""
    return [
        p for p in re.split(r"\n[ \t\f\v\r]*\n", text.replace("\r\n", "\n").replace("\r", "\n")) if p.strip()
    ]


# Plain text and Markdown -----------------------------------------------------------------------------------


def _read_txt(data: bytes, title: str, settings: IngestSettings) -> list[LoadedDocument]:
    return [_build_document("", title, (((), p) for p in _paragraphs(_decode_text(data))))]


_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_RULE = re.compile(r"^ {0,3}([-*_])[ \t]*(\1[ \t]*){2,}$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_LIST_ITEM = re.compile(r"^ {0,3}([-*+]|\d{1,9}[.)])[ \t]")


def _read_markdown(data: bytes, title: str, settings: IngestSettings) -> list[LoadedDocument]:
    lines = _decode_text(data).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[0].strip() == "---":  # YAML front matter is metadata, not text
        end = next((i for i, line in enumerate(lines[1:], 1) if line.strip() in ("---", "...")), None)
        if end is not None:
            lines = lines[end + 1 :]

    blocks: list[Block] = []
    headings: list[tuple[int, str]] = []  # (level, text) of the open headings
    buffer: list[str] = []
    in_fence = False
    first_heading = ""

    def path() -> HeadingPath:
        return tuple(text for _, text in headings)

    def flush() -> None:
        if buffer:
            blocks.append((path(), " ".join(buffer)))
            buffer.clear()

    def open_heading(level: int, text: str) -> None:
        nonlocal first_heading
        flush()
        while headings and headings[-1][0] >= level:
            headings.pop()
        if text:
            headings.append((level, text))
            first_heading = first_heading or text

    for line in lines:
        if _FENCE.match(line):  # code blocks stay one paragraph, and a "# comment" in them is no heading
            flush()  # the fence lines themselves are markup, not text
            in_fence = not in_fence
        elif in_fence:
            buffer.append(line)
        elif atx := _ATX.match(line):
            open_heading(len(atx.group(1)), _clean(atx.group(2) or ""))
        elif _SETEXT.match(line) and len(buffer) == 1:  # "Title" underlined by === or ---
            text = buffer.pop()
            open_heading(1 if line.strip().startswith("=") else 2, _clean(text))
        elif _RULE.match(line) or not line.strip():
            flush()
        else:
            if _LIST_ITEM.match(line):  # each list item its own paragraph, not one run-on line
                flush()
            buffer.append(line)
    flush()
    return [_build_document("", first_heading or title, blocks)]


# HTML ------------------------------------------------------------------------------------------------------

_DROP_TAGS = ["script", "style", "nav", "noscript", "template", "svg", "iframe", "head"]
# Elements that end the current paragraph; everything else (a, b, span ...) is inline.
_BLOCK_TAGS = frozenset(
    "address article aside blockquote body caption dd details div dl dt fieldset figcaption figure footer "  # noqa: SIM905
    "form header hr li main ol p pre section summary table tbody td tfoot th thead tr ul".split()
)
_HTML_HEADINGS = {f"h{i}": i for i in range(1, 7)}


def _read_html(data: bytes, title: str, settings: IngestSettings) -> list[LoadedDocument]:
    from bs4 import BeautifulSoup
    from bs4.element import NavigableString, PreformattedString, Tag

    soup = BeautifulSoup(_decode_text(data), "lxml")
    page_title = _clean(soup.title.get_text(" ")) if soup.title else ""
    if not page_title and (h1 := soup.find("h1")):
        page_title = _clean(h1.get_text(" "))
    for tag in soup(_DROP_TAGS):
        tag.decompose()

    blocks: list[Block] = []
    headings: list[tuple[int, str]] = []
    buffer: list[str] = []

    def flush() -> None:
        if buffer:
            blocks.append((tuple(text for _, text in headings), "".join(buffer)))
            buffer.clear()

    def walk(node: Tag) -> None:
        # Inline content accumulates into the current paragraph; a block element ends it.
        for child in node.children:
            if isinstance(child, PreformattedString):  # comments, doctype, CDATA
                continue
            if isinstance(child, NavigableString):
                buffer.append(str(child))
            elif not isinstance(child, Tag):
                continue
            elif child.name in _HTML_HEADINGS:
                flush()
                level = _HTML_HEADINGS[child.name]
                while headings and headings[-1][0] >= level:
                    headings.pop()
                if text := _clean(child.get_text(" ")):
                    headings.append((level, text))
            elif child.name == "br":
                buffer.append(" ")
            elif child.name in _BLOCK_TAGS:
                flush()
                walk(child)
                flush()
            else:
                walk(child)

    walk(soup)
    flush()
    return [_build_document("", page_title or title, blocks)]


# PDF -------------------------------------------------------------------------------------------------------


def _read_pdf(data: bytes, title: str, settings: IngestSettings) -> list[LoadedDocument]:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise IngestError("is an encrypted PDF; save an unencrypted copy and ingest that.")
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = str((reader.metadata or {}).get("/Title") or "")
    except IngestError:
        raise
    except Exception as exc:  # pypdf raises many types on broken input (PdfReadError, KeyError ...)
        raise IngestError(
            f"is a corrupt or encrypted PDF that cannot be read ({type(exc).__name__}: {exc}); "
            "re-export or repair it (e.g. `qpdf --decrypt in.pdf out.pdf`)."
        ) from exc
    blocks = [((f"Page {i}",), p) for i, page in enumerate(pages, 1) for p in _paragraphs(page)]
    if not any(p.strip() for _, p in blocks):
        raise IngestError(
            f"the PDF has {len(pages)} page(s) but no extractable text (a scanned image?); "
            "run OCR first (e.g. `ocrmypdf in.pdf out.pdf`)."
        )
    return [_build_document("", _clean(meta_title) or title, blocks)]


# JSON and JSONL --------------------------------------------------------------------------------------------

_NUMBER_KEYS = ("number", "num", "no", "nr")
_TYPE_KEYS = ("type", "kind")


def _read_json(data: bytes, title: str, settings: IngestSettings) -> list[LoadedDocument]:
    try:
        obj = json.loads(_decode_text(data))
    except json.JSONDecodeError as exc:
        raise IngestError(
            f"is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. Fix it and ingest again."
        ) from exc
    if isinstance(obj, list):
        return _json_records(obj, title, settings)
    if not isinstance(obj, dict):
        raise IngestError(f"holds a bare JSON {type(obj).__name__}; expected an object or a list of records.")
    if _json_text(obj, settings) is not None:  # one flat record: a whole-file document
        docs = _json_records([obj], title, settings)
        return [LoadedDocument("", d.title, d.text, d.sections) for d in docs]
    return [_json_tree(obj, title, settings)]


def _read_jsonl(data: bytes, title: str, settings: IngestSettings) -> list[LoadedDocument]:
    records = []
    for lineno, line in enumerate(_decode_text(data).splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise IngestError(
                f"line {lineno} is not valid JSON: {exc.msg} (column {exc.colno}). Each line must be one object."
            ) from exc
    return _json_records(records, title, settings)


def _dotted(obj: Any, dotted: str) -> Any:
    """``obj["a"]["b"]`` for ``"a.b"`` (digits index lists); None where the path does not exist."""
    for key in dotted.split("."):
        if isinstance(obj, dict):
            obj = obj.get(key)
        elif isinstance(obj, list) and key.isdigit() and int(key) < len(obj):
            obj = obj[int(key)]
        else:
            return None
    return obj


def _first_scalar(obj: Any, fields: Iterable[str]) -> str | None:
    for field in fields:
        value = _dotted(obj, field)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return None


def _json_text(record: Any, settings: IngestSettings) -> str | None:
    """The record's text: the first of json_text_fields holding a string (or a list of strings)."""
    for field in settings.json_text_fields:
        value = _dotted(record, field)
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = "\n\n".join(value)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _json_records(records: list[Any], title: str, settings: IngestSettings) -> list[LoadedDocument]:
    docs: list[LoadedDocument] = []
    seen: set[str] = set()
    for index, record in enumerate(records):
        text = _json_text(record, settings)
        if text is None:  # records without text (headers, metadata rows) are skipped, not fatal
            continue
        key = _first_scalar(record, settings.json_id_fields) or str(index)
        if key in seen:  # keep doc keys unique within the file, deterministically
            key = f"{key}#{index}"
        seen.add(key)
        record_title = _first_scalar(record, settings.json_title_fields) or f"{title} [{key}]"
        docs.append(_build_document(key, record_title, (((), p) for p in _paragraphs(text))))
    if not docs:
        raise IngestError(
            f"no record has a text field (tried {', '.join(settings.json_text_fields)}); "
            "set [ingest] json_text_fields in ragloop.toml to the key holding the text (dotted paths allowed)."
        )
    return docs


def _json_heading(node: dict, settings: IngestSettings) -> str | None:
    """``"{type} {number}  {title}"`` for a dict that is a heading level, else None.

    A dict is a heading when it has a title, or a number and children that have titles (a chapter known only
    by its number). A numbered dict without title and titled children (a point, a recital) is not: its text
    belongs to the enclosing section, so an article stays in one piece.
    """
    title, number, kind = (
        _clean(_first_scalar(node, keys) or "")
        for keys in (settings.json_title_fields, _NUMBER_KEYS, _TYPE_KEYS)
    )
    if not title:
        titled_children = any(
            isinstance(item, dict) and _first_scalar(item, settings.json_title_fields)
            for value in node.values()
            if isinstance(value, list)
            for item in value
        )
        if not number or not titled_children:
            return None
    prefix = " ".join(p for p in (kind.capitalize() if kind and number else None, number) if p)
    if not title:
        return prefix
    if not prefix or title.lower().startswith(prefix.lower()):
        return title
    return f"{prefix}  {title}"


def _json_tree(root: dict, title: str, settings: IngestSettings) -> LoadedDocument:
    """Walk one nested object (a regulation, a handbook): titled dicts are headings, text strings are body.

    Untitled items (points, subpoints, recitals) append to the enclosing section, labelled by their number
    ("1. ...", "(a) ..."). The root's title is the document title, not a heading; text with no heading above
    it is filed under the top-level key that holds it ("recitals" -> "Recitals").
    """
    meta_keys = (
        set(settings.json_title_fields) | set(_NUMBER_KEYS) | set(_TYPE_KEYS) | set(settings.json_id_fields)
    )
    blocks: list[Block] = []

    def emit(path: HeadingPath, group: HeadingPath, text: str) -> None:
        blocks.append((path or group, text))

    def walk(node: Any, path: HeadingPath, group: HeadingPath, is_root: bool = False) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, path, group)
            return
        if not isinstance(node, dict):
            return
        heading = None if is_root else _json_heading(node, settings)
        if heading:
            path = (*path, heading)
        # The node's own text comes before its children: a point's lead-in precedes its subpoints.
        label = "" if heading else _number_label(_first_scalar(node, _NUMBER_KEYS))
        for key in settings.json_text_fields:
            value = node.get(key)
            texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
            for text in texts:
                if isinstance(text, str) and text.strip():
                    emit(path, group, f"{label}{text}")
                    label = ""
        for key, value in node.items():
            if key not in meta_keys and isinstance(value, (dict, list)):
                walk(value, path, (key.replace("_", " ").strip().capitalize(),) if is_root else group)

    walk(root, (), (), is_root=True)
    if not blocks:
        raise IngestError(
            f"no text found: no value under any of {', '.join(settings.json_text_fields)}; "
            "set [ingest] json_text_fields in ragloop.toml to the key holding the text."
        )
    doc_title = _first_scalar(root, settings.json_title_fields) or title
    return _build_document("", doc_title, blocks)


def _number_label(number: str | None) -> str:
    """How an item number is written before its text: "1. " for digits, "(a) " for letters/roman numerals."""
    if not number:
        return ""
    if number.isdigit():
        return f"{number}. "
    if re.fullmatch(r"[A-Za-z]{1,6}", number):
        return f"({number}) "
    return f"{number} "


# XML -------------------------------------------------------------------------------------------------------

_TITLE_TAGS = frozenset({"title", "ti", "heading", "head", "h", "caption", "name"})
_TITLE_TAG = re.compile(r"^(s?ti|title|heading)([._-].*)?$", re.IGNORECASE)
_NOTE_TAGS = frozenset({"note", "footnote", "fn", "endnote"})  # footnotes would land mid-sentence
# A paragraph that is only item numbers: "1.", "(a)", "(12)", "iv)", "1. (a)", a bullet.
_LABEL = re.compile(
    r"^(?:(?:\(?(?:\d{1,4}|[a-zA-Z]{1,2}|[ivxlcdmIVXLCDM]{1,6})[.)]|\(\w{1,6}\)|\d{1,4}|[•·*–—-])\s*)+$"
)
_WORD = re.compile(r"[^\W\d_]{3,}")


def _tag(el: Any) -> str:
    """Local tag name (no namespace), lowercase; "" for comments, processing instructions, entities."""
    return el.tag.rpartition("}")[2].lower() if isinstance(el.tag, str) else ""


def _is_title(el: Any) -> bool:
    tag = _tag(el)
    return bool(tag) and (tag in _TITLE_TAGS or bool(_TITLE_TAG.match(tag)))


def _inline_text(el: Any, skip: frozenset = frozenset()) -> str:
    """Text of an element as one run, like itertext, but empty quote markers become quote marks and
    footnotes are left out."""
    parts = [el.text or ""] if isinstance(el.tag, str) else []
    for child in el:
        tag = _tag(child)
        if tag and child not in skip and tag not in _NOTE_TAGS:
            if "quot" in tag and len(child) == 0 and not (child.text or "").strip():
                parts.append("‘" if any(w in tag for w in ("start", "open", "begin")) else "’")
            else:
                parts.append(_inline_text(child))
        parts.append(child.tail or "")
    return "".join(parts)


def _title_text(el: Any) -> str:
    """A title element's text; a title made of title parts (TI + STI) joins them with two spaces."""
    children = [c for c in el if _tag(c)]
    if children and not _has_own_text(el):
        sep = "  " if all(_is_title(c) for c in children) else " "
        return sep.join(t for t in (_title_text(c) for c in children) if t)
    return _clean(_inline_text(el))


def _has_own_text(el: Any) -> bool:
    return bool((el.text or "").strip()) or any((c.tail or "").strip() for c in el)


def _read_xml(data: bytes, title: str, settings: IngestSettings) -> list[LoadedDocument]:
    from lxml import etree

    if b"\x00" in data and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise IngestError("contains NUL bytes: it is a binary file, not XML. Check the file type.")
    # Only entities defined inside the file are expanded (libxml2 refuses "billion laughs" amplification);
    # no external entities, DTD loading or network: an uploaded XML file must not read files or hosts.
    parser = etree.XMLParser(
        recover=False,
        resolve_entities="internal",
        load_dtd=False,
        no_network=True,
        remove_comments=True,
        remove_pis=True,
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        line, column = exc.position
        raise IngestError(
            f"is not well-formed XML at line {line}, column {column}: {exc.msg}. Fix it and ingest again."
        ) from exc

    blocks: list[Block] = []

    def walk(el: Any, path: HeadingPath) -> None:
        if _tag(el) in _NOTE_TAGS:
            return
        children = [c for c in el if _tag(c)]
        titles = list(itertools.takewhile(_is_title, children))
        if heading := "  ".join(t for t in map(_title_text, titles) if t):
            path = (*path, heading)
        if _has_own_text(el):  # mixed content (or a leaf): one paragraph
            blocks.append((path, _inline_text(el, skip=frozenset(titles))))
            return
        for child in children[len(titles) :]:
            walk(child, path)

    walk(root, ())
    first_title = ""
    for el in root.iter():
        if _is_title(el) and (first_title := _title_text(el)):
            break
    return [_build_document("", _shorten(first_title) or title, _xml_paragraphs(blocks))]


def _xml_paragraphs(blocks: list[Block]) -> list[Block]:
    """Join a number label ("1.", "(a)") to the paragraph it numbers, and drop paragraphs without a single
    word (dates, codes, page counts of bibliographic metadata)."""
    merged: list[Block] = []
    label: Block | None = None
    for path, text in blocks:
        text = _clean(text)
        if label and label[0] == path:
            text = f"{label[1]} {text}"
        label = None
        if _LABEL.match(text):
            label = (path, text)  # held back until the paragraph it numbers
        elif _WORD.search(text):
            merged.append((path, text))
    return merged


def _shorten(text: str, limit: int = 200) -> str:
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " …"


_READERS = {
    ".txt": _read_txt,
    ".md": _read_markdown,
    ".markdown": _read_markdown,
    ".html": _read_html,
    ".htm": _read_html,
    ".pdf": _read_pdf,
    ".json": _read_json,
    ".jsonl": _read_jsonl,
    ".xml": _read_xml,
}
