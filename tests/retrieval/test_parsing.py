from __future__ import annotations

import io
import time

import pytest

from callisto.services.retrieval.errors import (
    CorruptDocument,
    DocumentTooLarge,
    UnsupportedMimeType,
)
from callisto.services.retrieval.models import ParsedDocument
from callisto.services.retrieval.parsing import (
    CSV,
    DOCX,
    HTML,
    MARKDOWN,
    PDF,
    ParseOptions,
    parse_document,
    resolve_mime_type,
)


def make_pdf(pages: list[str]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    return bytes(pdf.output())


def make_docx() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Overview", level=1)
    document.add_paragraph("Callisto streams tokens over gRPC.")
    document.add_heading("Storage", level=2)
    document.add_paragraph("Vectors live in Milvus.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "engine"
    table.rows[0].cells[1].text = "Milvus"
    document.add_heading("Models", level=1)
    document.add_paragraph("Triton hosts the models.")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def assert_offsets(doc: ParsedDocument) -> None:
    for segment in doc.segments:
        assert doc.full_text[segment.start : segment.end] == segment.text


def test_pdf_pages_are_numbered() -> None:
    doc = parse_document(make_pdf(["Alpha page text.", "Beta page text."]), PDF)
    assert [s.page for s in doc.segments] == [1, 2]
    assert "Alpha" in doc.segments[0].text and "Beta" in doc.segments[1].text
    assert_offsets(doc)


def test_docx_headings_become_sections() -> None:
    doc = parse_document(make_docx(), DOCX)
    sections = [s.section for s in doc.segments]
    assert sections == [("Overview",), ("Overview", "Storage"), ("Models",)]
    assert "engine | Milvus" in doc.segments[1].text
    assert_offsets(doc)


def test_csv_rows_become_records_with_row_numbers() -> None:
    data = b"name,track\nKeynote,AI\nWorkshop,Data\n"
    doc = parse_document(data, CSV)
    assert [s.row for s in doc.segments] == [1, 2]
    assert doc.segments[1].text == "name: Workshop\ntrack: Data"
    assert_offsets(doc)


def test_csv_table_mode_keeps_one_segment() -> None:
    doc = parse_document(b"a,b\n1,2\n", CSV, options=ParseOptions(csv_mode="table"))
    assert len(doc.segments) == 1 and doc.segments[0].text == "a, b\n1, 2"


def test_markdown_heading_paths_ignore_code_fences() -> None:
    text = "# Guide\nIntro.\n## Install\nRun it.\n```\n# not a heading\n```\n# Next\nMore."
    doc = parse_document(text.encode(), MARKDOWN)
    assert [s.section for s in doc.segments] == [("Guide",), ("Guide", "Install"), ("Next",)]
    assert "# not a heading" in doc.segments[1].text
    assert doc.title == "Guide"
    assert_offsets(doc)


def test_html_headings_become_sections_and_scripts_vanish() -> None:
    html = (
        b"<html><head><title>Doc</title><script>var x=1;</script></head><body>"
        b"<h1>Top</h1><p>First <b>bold</b> para.</p><h2>Sub</h2><ul><li>item</li></ul>"
        b"</body></html>"
    )
    doc = parse_document(html, HTML)
    assert doc.title == "Doc"
    assert [s.section for s in doc.segments] == [("Top",), ("Top", "Sub")]
    assert "var x" not in doc.full_text and "bold" in doc.segments[0].text
    assert_offsets(doc)


def test_plain_text_and_mime_guessing_from_filename() -> None:
    assert resolve_mime_type("application/octet-stream", "notes.md") == MARKDOWN
    assert resolve_mime_type("text/plain; charset=utf-8") == "text/plain"
    doc = parse_document("Héllo wörld.".encode(), "text/plain")
    assert doc.full_text == "Héllo wörld."


def test_unsupported_mime_type_is_typed() -> None:
    with pytest.raises(UnsupportedMimeType) as info:
        parse_document(b"x", "image/png")
    assert info.value.field == "mime_type"


def test_corrupt_pdf_is_typed() -> None:
    with pytest.raises(CorruptDocument):
        parse_document(b"%PDF-1.7\nthis is not really a pdf", PDF)


def test_corrupt_docx_is_typed() -> None:
    with pytest.raises(CorruptDocument):
        parse_document(b"PK\x03\x04broken", DOCX)


def test_oversized_document_is_typed() -> None:
    with pytest.raises(DocumentTooLarge):
        parse_document(b"x" * 101, "text/plain", options=ParseOptions(max_bytes=100))


@pytest.mark.parametrize(
    "text",
    [
        "# a" + " " * 200_000 + "b",
        "# " + "#" * 200_000 + "x",
        "## " + " #" * 100_000 + "x",
        "# " + "." * 200_000,
    ],
    ids=["blanks", "hashes", "blank-hash", "dots"],
)
def test_markdown_headings_parse_in_linear_time(text: str) -> None:
    started = time.perf_counter()
    doc = parse_document(text.encode(), MARKDOWN)
    assert time.perf_counter() - started < 1.0
    assert len(doc.segments) == 1 and doc.segments[0].section


def test_markdown_heading_closing_hashes_and_blanks_are_stripped() -> None:
    doc = parse_document(b"#   Install  ##  \nbody\n### Deep #\nmore\n#NoSpace\n", MARKDOWN)
    assert [s.section for s in doc.segments] == [("Install",), ("Install", "Deep")]
    assert "#NoSpace" in doc.segments[1].text


def test_csv_with_a_wide_header_and_many_rows_parses_in_linear_time() -> None:
    data = b"," * 100_000 + b"\n" + b"x\n" * 20_000
    started = time.perf_counter()
    doc = parse_document(data, CSV)
    assert time.perf_counter() - started < 1.0
    assert len(doc.segments) == 20_000 and doc.segments[0].text == "column_1: x"
