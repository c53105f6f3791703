"""Documents built to hurt a parser: a DOCX zip bomb, a DOCX lying about its sizes, a 20 KB PDF
whose text extraction spins for minutes. Built in memory, in well under a second each."""

from __future__ import annotations

import functools
import io
import struct
import zipfile

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


@functools.cache
def small_docx() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Berth allocation", level=1)
    document.add_paragraph("Container ships longer than three hundred metres dock at berth seven.")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def docx_with_part(name: str, size: int, *, byte: bytes = b"\0") -> bytes:
    """A valid DOCX plus (or with, replaced) a deflated part ``name`` of ``size`` repeated bytes
    (zeros deflate ~1000-fold)."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(small_docx())) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as target,
    ):
        for entry in source.infolist():
            if entry.filename != name:
                target.writestr(entry, source.read(entry))
        with target.open(name, "w") as part:
            block = byte * (1024 * 1024)
            for _ in range(size // len(block)):
                part.write(block)
    return out.getvalue()


@functools.cache
def zip_bomb_docx(inflated: int = 200 * 1024 * 1024) -> bytes:
    """About 200 KB that python-docx would inflate to 200 MiB (and parse into far more)."""
    return docx_with_part("word/media/image1.bin", inflated)


def lying_docx(inflated: int = 64 * 1024 * 1024, declared: int = 1000) -> bytes:
    """A zip bomb whose headers declare each of its big part's sizes as ``declared`` bytes."""
    data = bytearray(docx_with_part("word/media/image1.bin", inflated))
    name = b"word/media/image1.bin"
    # Local file header: uncompressed size at offset 22; central directory header: at 24.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = 0
        while (at := data.find(signature, at)) != -1:
            name_length = struct.unpack_from("<H", data, at + (26 if offset == 22 else 28))[0]
            start = at + (30 if offset == 22 else 46)
            if bytes(data[start : start + name_length]) == name:
                struct.pack_into("<I", data, at + offset, declared)
            at += 4
    return bytes(data)


@functools.cache
def spinning_pdf(pages: int = 10, operators: int = 200_000) -> bytes:
    """About 20 KB of PDF: every page shows one shared, deflated content stream of ``operators``
    text operators, which pypdf extracts at about a minute per page."""

    from pypdf import PdfWriter
    from pypdf.generic import DictionaryObject, NameObject, StreamObject

    writer = PdfWriter()
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    resources = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})}
    )
    stream = StreamObject()
    stream.set_data(b"BT /F1 12 Tf 10 10 Td (spin) Tj ET\n" * operators)
    stream = stream.flate_encode()
    contents = writer._add_object(stream)
    for _ in range(pages):
        page = writer.add_blank_page(200, 200)
        page[NameObject("/Resources")] = resources
        page[NameObject("/Contents")] = contents
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()
