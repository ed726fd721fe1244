"""Text encodings of data files: byte-order marks are honoured, and a file that does not decode
gets one line naming the file, the byte offset and line, and the fix (``--data.encoding``)."""

from __future__ import annotations

import codecs
from pathlib import Path

from apm_lightning.core.errors import APMError

# Longest first: a UTF-32-LE mark starts with the UTF-16-LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def check_encoding_name(encoding: str) -> None:
    """``auto`` or a codec Python knows (``latin-1``, ``utf-16``, ``cp1252``...)."""
    if encoding == "auto":
        return
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise APMError(
            f"unknown text encoding {encoding!r} (use auto, utf-8, latin-1, utf-16, ...)"
        ) from None


def resolve_encoding(path: str | Path, encoding: str = "auto") -> str:
    """The codec to read ``path`` with: ``auto`` is UTF-8, or the encoding its byte-order mark
    names (UTF-8, UTF-16 or UTF-32 with a BOM); the ``-sig``/BOM codecs drop the mark."""
    if encoding != "auto":
        # Plain UTF-8 decodes the same with -sig, which also drops a leading mark (MRPC has one).
        return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    with open(path, "rb") as f:
        head = f.read(4)
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    return "utf-8"


def decode_error(path: str | Path, encoding: str) -> APMError:
    """The one line for a file that does not decode as ``encoding``, with the first bad byte's
    offset in the file (an error raised while reading knows only its chunk's offset). Only run
    on the error path, so reading the file whole here is fine."""
    data = Path(path).read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        bad = data[err.start : err.start + 1].hex()
        problem = f"{err.reason}: 0x{bad} at byte {err.start} (line {line})"
    else:  # decodes whole: the reader's own view of the bytes failed; name the codec only
        problem = "it does not decode"
    return APMError(
        f"{path} is not {encoding} text ({problem}); convert it to UTF-8 "
        f"(e.g. iconv -f latin1 -t utf-8) or set data.encoding (--data.encoding latin-1, cp1252, utf-16...)"
    )


def decodes(path: str | Path, encoding: str) -> bool:
    """Whether the whole file decodes (read in 1 MB chunks, never whole into memory)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    with open(path, "rb") as f:
        try:
            while chunk := f.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def check_decodes(path: str | Path, encoding: str) -> None:
    """Fail with :func:`decode_error` on a bad byte: for readers that would otherwise let bad
    bytes through (pyarrow's JSON reader keeps them until a row is read, then raises a bare
    UnicodeDecodeError)."""
    if not decodes(path, encoding):
        raise decode_error(path, encoding)
