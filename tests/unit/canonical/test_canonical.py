"""cag.canonical: canonical text, front matter, stable source loading, checksums."""

from __future__ import annotations

import json
import unicodedata
from dataclasses import replace
from pathlib import Path

import pytest

from cag.canonical import (
    GoldenCase,
    SourceBundle,
    canonical_text,
    chain_hash,
    context_checksum,
    load_source,
    source_checksum,
    split_front_matter,
)
from cag.canonical.checksum import module_key
from cag.errors import SourceError


def write(root: Path, rel: str, text: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def tool(name: str, **extra: object) -> str:
    return json.dumps({"name": name, **extra})


# -- canonical text ---------------------------------------------------------------------------


def test_canonical_text_normalizes_line_ends_and_trailing_blanks() -> None:
    raw = "\n\n  \nline one  \r\nline two\t\rline three \n\n\n"
    assert canonical_text(raw) == "line one\nline two\nline three\n"


def test_canonical_text_strips_blank_lines_but_keeps_indentation() -> None:
    assert canonical_text("\n \t\n  indented\n\n") == "  indented\n"


def test_canonical_text_is_nfc() -> None:
    decomposed = "cafe\u0301"
    assert canonical_text(decomposed) == "caf\u00e9\n"
    assert canonical_text(decomposed) == canonical_text("caf\u00e9")


def test_canonical_text_empty_stays_empty() -> None:
    assert canonical_text("") == ""
    assert canonical_text(" \r\n\t\n") == ""


@pytest.mark.parametrize("raw", ["a\r\nb  \r\n", "\n\ncafe\u0301 \n", "x", "", "  a\n\n\nb\t\n\n"])
def test_canonical_text_is_idempotent(raw: str) -> None:
    once = canonical_text(raw)
    assert canonical_text(once) == once


# -- front matter -----------------------------------------------------------------------------


def test_front_matter_parses_known_and_unknown_keys() -> None:
    text = (
        '---\ntitle: "Refund policy"\nsection: policy\norder: 2\nupdated: 2026-01-15\nowner: billing-team\n---\nBody\n'
    )
    meta, rest = split_front_matter(text, name="doc.md")
    assert (meta.title, meta.section, meta.order, meta.updated) == (
        "Refund policy",
        "policy",
        2,
        "2026-01-15",
    )
    assert meta.extra == (("owner", "billing-team"),)
    assert rest == "Body\n"


def test_no_front_matter_returns_text_unchanged() -> None:
    meta, rest = split_front_matter("# Title\nBody\n", name="doc.md")
    assert meta.title is None and meta.order == 0
    assert rest == "# Title\nBody\n"


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("---\ntitle: x\nBody\n", 1, "never closed"),
        ("---\ntitle: x\nno colon here\n---\nBody\n", 3, "key: value"),
        ("---\norder: first\n---\nBody\n", 2, "'order' must be an integer"),
        (
            "---\ntitle: x\nupdated: 2026-13-01\n---\nBody\n",
            3,
            "'updated' must be a date",
        ),
        ("---\nupdated: 15/01/2026\n---\nBody\n", 2, "'updated' must be a date"),
        ("---\nupdated: 20260115\n---\nBody\n", 2, "'updated' must be a date"),
    ],
)
def test_malformed_front_matter_names_file_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(SourceError, match=rf"doc\.md:{line}: .*{fragment}"):
        split_front_matter(text, name="doc.md")


# -- load_source --------------------------------------------------------------------------------


def test_document_fields_from_front_matter_heading_and_stem(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.md",
        "---\ntitle: Front\nsection: policy\norder: 3\nupdated: 2026-02-01\n---\n# Heading\nText\n",
    )
    write(tmp_path, "sub/b.md", "intro\n# From Heading\nText\n")
    write(tmp_path, "sub/c.txt", "plain text\n")
    bundle = load_source(tmp_path)
    docs = {d.path: d for d in bundle.documents}
    assert set(docs) == {"a.md", "sub/b.md", "sub/c.txt"}
    assert (docs["a.md"].title, docs["a.md"].section, docs["a.md"].order) == (
        "Front",
        "policy",
        3,
    )
    assert docs["a.md"].body == "# Heading\nText\n"
    assert (docs["sub/b.md"].title, docs["sub/b.md"].section) == (
        "From Heading",
        "general",
    )
    assert docs["sub/c.txt"].title == "c" and docs["sub/c.txt"].updated is None
    assert bundle.updated == "2026-02-01"


def test_ignores_hidden_files_non_documents_and_nested_tools(tmp_path: Path) -> None:
    write(tmp_path, "doc.md", "text\n")
    write(tmp_path, ".hidden.md", "secret\n")
    write(tmp_path, ".git/notes.md", "secret\n")
    write(tmp_path, "image.png", b"\x89PNG\xff")
    write(tmp_path, "tools/readme.md", "not a document\n")
    write(tmp_path, "tools/nested/x.json", "not json")
    bundle = load_source(tmp_path)
    assert [d.path for d in bundle.documents] == ["doc.md"]
    assert bundle.tools == ()


def test_document_order_by_section_rank_then_order_then_path(tmp_path: Path) -> None:
    files = {
        "z.md": "---\nsection: faq\n---\nz\n",
        "y.md": "---\nsection: policy\norder: 2\n---\ny\n",
        "x.md": "---\nsection: policy\norder: 1\n---\nx\n",
        "w.md": "---\nsection: zeta\n---\nw\n",
        "v.md": "---\nsection: alpha\n---\nv\n",
        "b.md": "---\nsection: policy\norder: 1\n---\nb\n",
    }
    orders = [list(files), list(reversed(files))]
    results = []
    for i, names in enumerate(orders):
        root = tmp_path / str(i)
        for name in names:  # creation order differs between the two roots
            write(root, name, files[name])
        results.append([d.path for d in load_source(root, section_order=["policy", "faq"]).documents])
    assert results[0] == results[1] == ["b.md", "x.md", "y.md", "z.md", "v.md", "w.md"]


def test_tools_are_canonical_json_sorted_by_name(tmp_path: Path) -> None:
    write(
        tmp_path,
        "tools/b.json",
        '{\n  "name": "zeta",\n  "description": "caf\u0065\u0301",\n  "a": [1, 2]\n}\n',
    )
    write(tmp_path, "tools/a.json", tool("alpha"))
    bundle = load_source(tmp_path)
    assert [t.name for t in bundle.tools] == ["alpha", "zeta"]
    assert bundle.tools[1].text == '{"a": [1, 2], "description": "caf\u00e9", "name": "zeta"}'
    assert bundle.documents == ()


def test_golden_cases_load_and_pass(tmp_path: Path) -> None:
    write(tmp_path, "doc.md", "text\n")
    write(
        tmp_path,
        "golden.json",
        json.dumps([{"question": "How long?", "expect": ["30 days", "Refund"]}]),
    )
    (case,) = load_source(tmp_path).golden
    assert case == GoldenCase(question="How long?", expect=("30 days", "Refund"))
    assert case.passes("REFUNDS within  30\n days.")
    assert not case.passes("Refunds within 31 days.")


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"question": "q", "expect": ["x"]}',
        '[{"question": "q"}]',
        '[{"question": "", "expect": ["x"]}]',
        '[{"question": "q", "expect": []}]',
        '[{"question": "q", "expect": "x"}]',
        '[{"question": "q", "expect": [" "]}]',
        '[{"question": "q", "expect": ["x"], "extra": 1}]',
    ],
)
def test_malformed_golden_is_a_source_error(tmp_path: Path, content: str) -> None:
    write(tmp_path, "doc.md", "text\n")
    write(tmp_path, "golden.json", content)
    with pytest.raises(SourceError, match="golden.json"):
        load_source(tmp_path)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        load_source(tmp_path / "nope")


def test_root_is_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, "file.md", "x\n")
    with pytest.raises(SourceError, match="is not a directory"):
        load_source(path)


def test_empty_source(tmp_path: Path) -> None:
    write(tmp_path, "golden.json", "[]")
    write(tmp_path, "notes.csv", "a,b\n")
    with pytest.raises(SourceError, match=r"is empty: add \.md/\.txt documents or tools/\*\.json"):
        load_source(tmp_path)


def test_non_utf8_document(tmp_path: Path) -> None:
    write(tmp_path, "latin1.md", "caf\u00e9\n".encode("latin-1"))
    with pytest.raises(SourceError, match=r"latin1\.md: not valid UTF-8"):
        load_source(tmp_path)


def test_document_with_empty_body(tmp_path: Path) -> None:
    write(tmp_path, "empty.md", "---\ntitle: Nothing\n---\n  \n\n")
    with pytest.raises(SourceError, match=r"empty\.md: document has no content"):
        load_source(tmp_path)


def test_malformed_front_matter_in_source_names_file(tmp_path: Path) -> None:
    write(tmp_path, "bad.md", "---\norder: x\n---\nbody\n")
    with pytest.raises(SourceError, match=r"bad\.md:2: 'order'"):
        load_source(tmp_path)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"name": ', r"x\.json:1:\d+: invalid JSON"),
        ('["name"]', "string 'name'"),
        ('{"name": 3}', "string 'name'"),
        ('{"description": "no name"}', "string 'name'"),
    ],
)
def test_invalid_tool_schema(tmp_path: Path, content: str, fragment: str) -> None:
    write(tmp_path, "tools/x.json", content)
    with pytest.raises(SourceError, match=fragment):
        load_source(tmp_path)


def test_duplicate_tool_names(tmp_path: Path) -> None:
    write(tmp_path, "tools/a.json", tool("same"))
    write(tmp_path, "tools/b.json", tool("same", description="other"))
    with pytest.raises(SourceError, match="tool name 'same' is already defined"):
        load_source(tmp_path)


# -- checksums --------------------------------------------------------------------------------


def _bundle(tmp_path: Path) -> SourceBundle:
    write(tmp_path, "doc.md", "---\ntitle: T\nsection: s\norder: 1\n---\nbody\n")
    write(tmp_path, "tools/t.json", tool("t"))
    return load_source(tmp_path)


def test_checksum_same_for_composed_and_decomposed_and_crlf(tmp_path: Path) -> None:
    write(tmp_path / "a", "doc.md", "caf\u00e9 menu\nline\n")
    write(
        tmp_path / "b",
        "doc.md",
        unicodedata.normalize("NFD", "caf\u00e9 menu  \r\nline\r\n\r\n"),
    )
    assert source_checksum(load_source(tmp_path / "a")) == source_checksum(load_source(tmp_path / "b"))


def test_checksum_changes_with_each_content_field(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    base = source_checksum(bundle)
    (doc,) = bundle.documents
    (schema,) = bundle.tools
    variants = [
        replace(doc, path="other.md"),
        replace(doc, title="T2"),
        replace(doc, section="s2"),
        replace(doc, order=2),
        replace(doc, body="body2\n"),
    ]
    sums = {source_checksum(replace(bundle, documents=(v,))) for v in variants}
    sums |= {
        source_checksum(replace(bundle, tools=(replace(schema, name="u"),))),
        source_checksum(replace(bundle, tools=(replace(schema, text='{"name": "t", "x": 1}'),))),
        source_checksum(replace(bundle, tools=())),
    }
    assert len(sums) == 8 and base not in sums


def test_checksum_fields_are_unambiguous(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    (doc,) = bundle.documents
    a = replace(bundle, documents=(replace(doc, title="ab", section="c"),))
    b = replace(bundle, documents=(replace(doc, title="a", section="bc"),))
    assert source_checksum(a) != source_checksum(b)


def test_checksum_ignores_golden_and_updated(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    base = source_checksum(bundle)
    write(tmp_path, "golden.json", json.dumps([{"question": "q", "expect": ["x"]}]))
    reloaded = load_source(tmp_path)
    assert reloaded.golden and source_checksum(reloaded) == base
    (doc,) = bundle.documents
    assert source_checksum(replace(bundle, documents=(replace(doc, updated="2026-01-01"),))) == base


CONTEXT: dict[str, str | None] = {
    "source_checksum": "s",
    "layout_hash": "l",
    "model_revision": "m",
    "tokenizer_revision": "t",
    "parent_chain_hash": None,
    "dtype": "float32",
    "tenant_id": "acme",
    "acl_scope": "user",
    "acl_principal": "alice",
}


def ctx(**overrides: str | None) -> str:
    fields = {**CONTEXT, **overrides}
    return context_checksum(
        source_checksum=str(fields["source_checksum"]),
        layout_hash=str(fields["layout_hash"]),
        model_revision=str(fields["model_revision"]),
        tokenizer_revision=str(fields["tokenizer_revision"]),
        parent_chain_hash=fields["parent_chain_hash"],
        dtype=str(fields["dtype"]),
        tenant_id=str(fields["tenant_id"]),
        acl_scope=str(fields["acl_scope"]),
        acl_principal=str(fields["acl_principal"]),
    )


def test_context_checksum_is_deterministic_sha256() -> None:
    assert ctx() == ctx()
    assert len(ctx()) == 64 and int(ctx(), 16) >= 0


@pytest.mark.parametrize("field", list(CONTEXT))
def test_context_checksum_changes_with_each_input(field: str) -> None:
    assert ctx(**{field: "x"}) != ctx()


def test_context_checksum_distinguishes_no_parent_from_empty_parent() -> None:
    assert ctx(parent_chain_hash="") != ctx()


def test_context_checksum_fields_are_unambiguous() -> None:
    assert ctx(model_revision="ab", tokenizer_revision="c") != ctx(model_revision="a", tokenizer_revision="bc")
    assert ctx(tenant_id="acme", acl_principal="") != ctx(tenant_id="acm", acl_principal="e")


def test_the_acl_principal_is_part_of_the_context_and_the_module_key() -> None:
    """The same knowledge compiled for alice and for bob is two modules (issue 6, defect 3)."""
    assert ctx(acl_principal="alice") != ctx(acl_principal="bob")
    key = {"context_checksum": ctx(), "tenant_id": "acme", "route": "r", "acl_scope": "user"}
    assert module_key(**key, acl_principal="alice") != module_key(**key, acl_principal="bob")
    assert module_key(**key, acl_principal="alice") == module_key(**key, acl_principal="alice")
    assert module_key(**{**key, "acl_scope": "workspace"}, acl_principal="alice") != module_key(
        **key, acl_principal="alice"
    )


def test_chain_hash_covers_parent_and_context() -> None:
    root = chain_hash(parent_chain_hash=None, context_checksum="c")
    assert root == chain_hash(parent_chain_hash=None, context_checksum="c")
    assert chain_hash(parent_chain_hash=root, context_checksum="c") != root
    assert chain_hash(parent_chain_hash=None, context_checksum="d") != root
    assert chain_hash(parent_chain_hash="p1", context_checksum="c") != chain_hash(
        parent_chain_hash="p2", context_checksum="c"
    )
