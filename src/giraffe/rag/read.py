"""Files -> pages of plain text, or a reason to skip the file.

`read_pages(path)` returns [(page number or None, text)]: one page for .txt/.md/.html,
one per PDF page (numbered from 1). `pages_from_bytes(name, data)` does the same for
bytes that came from elsewhere (an upload): `name` only decides the kind by its suffix
and labels the messages, it is never opened. A file that cannot be used raises
`SkipFile` with a sentence saying why (binary, empty, too large, not UTF-8, encrypted or
unreadable PDF, unsupported kind); ingestion reports it and goes on with the next file.
It knows nothing of chunks, embeddings or the store.
"""

from __future__ import annotations

import html.parser
from pathlib import Path, PurePath

from giraffe.config import InputError

SUFFIXES = {".txt", ".md", ".markdown", ".html", ".htm", ".pdf"}
MAX_BYTES = 20 * 1024 * 1024  # a larger file is skipped: say so rather than take an hour


class SkipFile(InputError):
    """This file cannot be ingested; the message says why."""


def read_pages(path: Path, max_bytes: int = MAX_BYTES) -> list[tuple[int | None, str]]:
    return pages_from_bytes(str(path), read_file(path, max_bytes), max_bytes)


def read_file(path: Path, max_bytes: int = MAX_BYTES) -> bytes:
    """The file's bytes, after checking its kind and size (so a huge file is never read)."""
    check_kind(str(path))
    try:
        size = path.stat().st_size
        _check_size(str(path), size, max_bytes)
        return path.read_bytes()
    except OSError as e:
        raise SkipFile(f"{path}: cannot be read ({e.strerror or e})") from None


def pages_from_bytes(
    name: str, data: bytes, max_bytes: int = MAX_BYTES
) -> list[tuple[int | None, str]]:
    """Pages of a document's bytes; `name` gives the kind (its suffix) and labels errors."""
    suffix = check_kind(name)
    _check_size(name, len(data), max_bytes)
    if not data.strip():
        raise SkipFile(f"{name}: the file is empty")
    pages = _pdf_pages(name, data) if suffix == ".pdf" else [(None, _text(name, data, suffix))]
    if not any(text.strip() for _, text in pages):
        raise SkipFile(f"{name}: no text in it (a scanned PDF needs OCR first)")
    return pages


def check_kind(name: str) -> str:
    """The name's suffix (lower case) if giraffe reads that kind, else SkipFile saying which it reads."""
    suffix = PurePath(name).suffix.lower()
    if suffix not in SUFFIXES:
        raise SkipFile(f"{name}: unsupported kind {suffix or '(none)'}; giraffe reads " + _kinds())
    return suffix


def _check_size(name: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise SkipFile(
            f"{name}: {size / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB limit "
            "(raise it with --max-mb)"
        )


def _kinds() -> str:
    return ", ".join(sorted(SUFFIXES))


def _text(path: str, data: bytes, suffix: str) -> str:
    if b"\x00" in data[:8192]:
        raise SkipFile(f"{path}: looks binary (NUL bytes), not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SkipFile(
            f"{path}: not UTF-8 (byte {data[e.start]:#04x} at offset {e.start}); "
            "convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None
    return html_text(text) if suffix in (".html", ".htm") else text


def _pdf_pages(path: str, data: bytes) -> list[tuple[int | None, str]]:
    import io

    import pypdf

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise SkipFile(f"{path}: the PDF is encrypted; decrypt it first")
        return [(i + 1, page.extract_text() or "") for i, page in enumerate(reader.pages)]
    except SkipFile:
        raise
    except Exception as e:  # pypdf raises many kinds on damaged files
        raise SkipFile(f"{path}: unreadable PDF ({type(e).__name__}: {e})") from None


class _TextOnly(html.parser.HTMLParser):
    """Keep the visible text; drop script/style; paragraphs where block elements end."""

    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section"}
    HIDDEN = {"script", "style", "head", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


def html_text(markup: str) -> str:
    parser = _TextOnly()
    parser.feed(markup)
    parser.close()
    paragraphs = ("".join(parser.parts)).split("\n\n")
    cleaned = (" ".join(p.split()) for p in paragraphs)
    return "\n\n".join(p for p in cleaned if p)
