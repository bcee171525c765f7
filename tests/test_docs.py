from __future__ import annotations

# Every ```python block in docs/*.md (and in the README's "Write a workflow" section) is
# either executed or checked against the file it quotes.
#
# - A block whose nearest non-blank line above the fence is ``<!-- excerpt: PATH -->`` is
#   an excerpt: its lines (each stripped of leading/trailing whitespace) must appear as a
#   contiguous run of lines in PATH (relative to the repository root).
# - Every other block is executed. The blocks of one Markdown file run in order in one
#   shared namespace (a fresh module per file), like a doctest session, so a block may use
#   what an earlier block of the same file defined.
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted((REPO / "docs").glob("*.md"))
README = REPO / "README.md"
README_SECTION = "## Write a workflow"

FENCE = re.compile(r"^```python[ \t]*$")
EXCERPT = re.compile(r"^<!--\s*excerpt:\s*(?P<path>\S+)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # 1-based line of the first code line
    code: str
    excerpt_of: str | None


def blocks(doc: Path, *, section: str | None = None) -> list[Block]:
    """The ```python blocks of ``doc`` (only those under heading ``section`` if given)."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    inside = section is None
    index = 0
    while index < len(lines):
        text = lines[index]
        if section is not None and text.startswith("## "):
            inside = text.strip() == section
        if inside and FENCE.match(text):
            start = index + 1
            end = start
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            if end == len(lines):
                raise AssertionError(f"{doc.name}:{index + 1}: unterminated ```python block")
            above = index - 1
            while above >= 0 and not lines[above].strip():
                above -= 1
            marker = EXCERPT.match(lines[above].strip()) if above >= 0 else None
            found.append(
                Block(
                    doc=doc,
                    line=start + 1,
                    code="\n".join(lines[start:end]) + "\n",
                    excerpt_of=marker.group("path") if marker else None,
                )
            )
            index = end
        index += 1
    return found


def doc_id(doc: Path) -> str:
    try:
        return doc.relative_to(REPO).as_posix()
    except ValueError:
        return doc.name


def run_blocks(doc: Path, found: list[Block]) -> None:
    name = "_squidmesh_docs_" + re.sub(r"\W", "_", doc.stem)
    module = types.ModuleType(name)
    module.__file__ = str(doc)
    sys.modules[name] = module  # pydantic and dataclasses look definitions up here
    try:
        for block in found:
            if block.excerpt_of is not None:
                continue
            # Pad with newlines so tracebacks point at the right line of the Markdown file.
            source = "\n" * (block.line - 1) + block.code
            code = compile(source, str(block.doc), "exec", dont_inherit=True)
            try:
                exec(code, module.__dict__)
            except Exception as exc:
                raise AssertionError(
                    f"{doc_id(block.doc)}:{block.line}: the python block starting here "
                    f"failed: {type(exc).__name__}: {exc}"
                ) from exc
    finally:
        sys.modules.pop(name, None)


def check_excerpts(found: list[Block]) -> None:
    for block in found:
        if block.excerpt_of is None:
            continue
        target = REPO / block.excerpt_of
        where = f"{doc_id(block.doc)}:{block.line}"
        assert target.is_file(), f"{where}: excerpt of a missing file {block.excerpt_of}"
        quoted = [line.strip() for line in block.code.strip("\n").splitlines()]
        source = [line.strip() for line in target.read_text(encoding="utf-8").splitlines()]
        size = len(quoted)
        assert size, f"{where}: empty excerpt"
        assert any(source[i : i + size] == quoted for i in range(len(source) - size + 1)), (
            f"{where}: this excerpt no longer appears verbatim in {block.excerpt_of}"
        )


def test_the_docs_exist() -> None:
    names = {doc.name for doc in DOCS}
    assert {"workflow_authoring.md", "determinism.md", "testing.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_doc_excerpts_match_their_source(doc: Path) -> None:
    check_excerpts(blocks(doc))


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_doc_python_blocks_run(doc: Path) -> None:
    found = blocks(doc)
    assert found, f"{doc_id(doc)} has no python blocks"
    run_blocks(doc, found)


def test_readme_workflow_section() -> None:
    found = blocks(README, section=README_SECTION)
    assert any(block.excerpt_of is None for block in found), (
        f"README.md has no runnable python block under {README_SECTION!r}"
    )
    check_excerpts(found)
    run_blocks(README, found)


def test_readme_links_the_docs() -> None:
    text = README.read_text(encoding="utf-8")
    for doc in ("workflow_authoring.md", "determinism.md", "testing.md"):
        assert f"(docs/{doc})" in text, f"README.md does not link docs/{doc}"


def test_excerpt_checker_catches_drift(tmp_path: Path) -> None:
    doc = tmp_path / "drift.md"
    doc.write_text(
        "<!-- excerpt: examples/ring_errand.py -->\n"
        "```python\n"
        "def toss_ring(ring_id: str) -> str:\n"
        '    return f"{ring_id} kept safe"\n'
        "```\n"
    )
    (block,) = blocks(doc)
    assert block.excerpt_of == "examples/ring_errand.py"
    with pytest.raises(AssertionError, match="no longer appears verbatim"):
        check_excerpts([block])
