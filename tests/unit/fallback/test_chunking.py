"""The chunker: exact offsets, structure (headings, paragraphs, tool schemas), bounds, deterministic ids."""

from __future__ import annotations

from cag.fallback.core.chunking import ChunkLimits, SourceDocument, chunk_document

URI = "file:///kb/billing"

DOC = SourceDocument(
    path="payments.md",
    title="Payments",
    text=(
        "Intro paragraph about paying.\n\n"
        "# Cards\n\n"
        "We accept Visa and Mastercard.\n\n"
        "Cards are charged on the first day.\n\n"
        "## Refunds\n\n"
        "Refunds take five business days.\n"
        "# Wire transfers\n\n"
        "Wire transfers need the invoice number.\n"
    ),
)


def test_every_chunk_is_the_exact_text_at_its_offsets() -> None:
    chunks = chunk_document("acme", URI, DOC, ChunkLimits(max_chars=60, min_chars=10))
    assert chunks
    for chunk in chunks:
        assert DOC.text[chunk.start : chunk.end] == chunk.text
        assert (chunk.source_uri, chunk.path) == (URI, "payments.md")
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)


def test_headings_start_new_chunks_and_name_the_path_above() -> None:
    chunks = chunk_document("acme", URI, DOC, ChunkLimits(max_chars=500, min_chars=10))
    by_heading = {c.heading: c.text for c in chunks}
    assert by_heading["Payments"] == "Intro paragraph about paying."
    assert by_heading["Payments > Cards"].startswith("# Cards")
    assert "Cards are charged" in by_heading["Payments > Cards"]
    assert by_heading["Payments > Cards > Refunds"] == "## Refunds\n\nRefunds take five business days."
    assert by_heading["Payments > Wire transfers"] == "# Wire transfers\n\nWire transfers need the invoice number."


def test_paragraphs_of_a_section_split_when_they_do_not_fit() -> None:
    chunks = chunk_document("acme", URI, DOC, ChunkLimits(max_chars=45, min_chars=10))
    cards = [c.text for c in chunks if c.heading == "Payments > Cards"]
    assert cards == ["# Cards\n\nWe accept Visa and Mastercard.", "Cards are charged on the first day."]


def test_a_long_paragraph_is_cut_after_a_sentence_and_every_chunk_is_bounded() -> None:
    text = "First sentence is here. " * 20 + "Last words without a stop"
    doc = SourceDocument(path="long.md", title="Long", text=text)
    chunks = chunk_document("acme", URI, doc, ChunkLimits(max_chars=100, min_chars=10))
    assert len(chunks) > 4
    assert all(len(c.text) <= 100 for c in chunks)
    assert all(c.text.endswith(".") for c in chunks[:-1])
    assert "".join(c.text for c in chunks).replace(" ", "") == text.replace(" ", "")


def test_a_tool_schema_is_one_chunk_under_its_title() -> None:
    text = '{"name": "refund", "parameters": {"order_id": "string"}}\n\n{"trailing": true}'
    doc = SourceDocument(path="tools/refund.json", title="refund", text=text)
    [chunk] = chunk_document("acme", URI, doc, ChunkLimits(max_chars=200, min_chars=10))
    assert (chunk.text, chunk.heading, chunk.start, chunk.end) == (text, "refund", 0, len(text))


def test_ids_depend_on_tenant_source_place_and_text_only() -> None:
    first = chunk_document("acme", URI, DOC)
    assert [c.chunk_id for c in chunk_document("acme", URI, DOC)] == [c.chunk_id for c in first]
    assert len({c.chunk_id for c in first}) == len(first)
    others = [chunk_document("globex", URI, DOC), chunk_document("acme", URI + "2", DOC)]
    assert all(not {c.chunk_id for c in other} & {c.chunk_id for c in first} for other in others)


def test_blank_documents_have_no_chunks() -> None:
    assert chunk_document("acme", URI, SourceDocument(path="empty.md", title="Empty", text=" \n\n\t\n")) == []
