from __future__ import annotations

# What the README and docs/*.md claim holds, checked rule by rule:
#
# - Every ```python block is executed or checked against the file it quotes. A block
#   whose first line is ``# excerpt of PATH`` is an excerpt, visibly so for the reader:
#   its other lines (each stripped of leading/trailing whitespace) must appear as a
#   contiguous run of lines in PATH (relative to the repository root). Every other block
#   is executed; the blocks of one Markdown file run in order in one shared namespace (a
#   fresh module per file), like a doctest session, as the pages say.
# - Every shell transcript (console/bash blocks, ``$``-prompted text blocks) runs, in
#   order per file, and prints what the docs say it prints (tests/support/transcripts.py
#   says what may differ), unless it is marked ``<!-- not run: REASON -->``.
# - No fenced block shows an absolute path of the machine that produced it.
# - Every relative link points to a file of the repository (and an existing heading).
# - Version numbers quoted from the code are the code's; the install steps create a
#   virtualenv first; the API reference covers the public names.
import importlib
import os
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import postgres
from tests.support.transcripts import command_blocks, run_transcript, sandbox

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted((REPO / "docs").glob("*.md"))
README = REPO / "README.md"
README_SECTION = "## Write a workflow"
#: every Markdown file a reader meets: README, the guides, the API reference pages
PAGES = [README, *DOCS, *sorted((REPO / "docs" / "reference").glob("*.md"))]

FENCE = re.compile(r"^```python[ \t]*$")
EXCERPT = re.compile(r"^#\s*excerpt of\s+(?P<path>\S+)\s*$")
#: the invisible marker of old: a rendered page hid it, so readers ran excerpts
HIDDEN_EXCERPT = re.compile(r"<!--\s*excerpt:")


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
            marker = EXCERPT.match(lines[start].strip()) if start < end else None
            first = start + 1 if marker else start  # the marker is not part of the quote
            found.append(
                Block(
                    doc=doc,
                    line=first + 1,
                    code="\n".join(lines[first:end]) + "\n",
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
def test_doc_python_blocks_run(
    doc: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = blocks(doc)
    assert found, f"{doc_id(doc)} has no python blocks"
    if any('os.environ["DATABASE_URL"]' in b.code for b in found if b.excerpt_of is None):
        # The PostgreSQL examples read the database from DATABASE_URL, as an application
        # would: here, a fresh database on the test server.
        url = request.getfixturevalue("pg_database_url")
        monkeypatch.setenv("DATABASE_URL", postgres.sqlalchemy_url(url))
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
        "```python\n"
        "# excerpt of examples/ring_errand.py\n"
        "def toss_ring(ring_id: str) -> str:\n"
        '    return f"{ring_id} kept safe"\n'
        "```\n"
    )
    (block,) = blocks(doc)
    assert block.excerpt_of == "examples/ring_errand.py"
    with pytest.raises(AssertionError, match="no longer appears verbatim"):
        check_excerpts([block])


# --------------------------------------------------------------------------- excerpts


@pytest.mark.parametrize("doc", PAGES, ids=doc_id)
def test_excerpts_are_visibly_marked(doc: Path) -> None:
    # A rendered page hides HTML comments: an excerpt marked only by one looks like code
    # to run, and fails with NameError when a reader runs the page's blocks in order.
    text = doc.read_text(encoding="utf-8")
    assert not HIDDEN_EXCERPT.search(text), (
        f"{doc_id(doc)}: mark excerpts with a first line '# excerpt of PATH', not an HTML comment"
    )


# --------------------------------------------------------------------------- transcripts


def transcript_docs() -> list[Path]:
    return [doc for doc in PAGES if command_blocks(doc)]


@pytest.mark.timeout(300)  # the operations session: ~45 commands, and two 5 s timers
@pytest.mark.parametrize("doc", transcript_docs(), ids=doc_id)
def test_command_blocks_run_or_are_marked(
    doc: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    found = command_blocks(doc)
    for block in found:
        assert block.commands, f"{doc_id(doc)}:{block.line}: a command block without commands"
        if block.not_run is not None:
            assert block.not_run, f"{doc_id(doc)}:{block.line}: say why it is not run"
    env = sandbox(tmp_path)
    runnable = [b for b in found if b.not_run is None]
    if any("$DATABASE_URL" in c.text for b in runnable for c in b.commands):
        env["DATABASE_URL"] = postgres.sqlalchemy_url(request.getfixturevalue("pg_database_url"))
    if not runnable:
        return  # every block says why it is not run (checked above): nothing to run
    assert run_transcript(runnable, tmp_path, env) == sum(len(b.commands) for b in runnable)


def test_transcript_checker_catches_drift(tmp_path: Path) -> None:
    doc = tmp_path / "drift.md"
    doc.write_text(
        "```text\n"
        "$ squidmesh check squidmesh.demo\n"
        "1 workflow(s) checked, no findings: ring_errand, and more\n"
        "```\n\n"
        "<!-- not run: an example of a marked block -->\n"
        "```console\n"
        "$ squidmesh --app myapp:mesh worker\n"
        "```\n"
    )
    drifted, marked = command_blocks(doc)
    assert marked.not_run == "an example of a marked block" and drifted.not_run is None
    with pytest.raises(AssertionError, match="printed something else than the docs say"):
        run_transcript([drifted], tmp_path, sandbox(tmp_path))


# --------------------------------------------------------------------------- paths, links

MACHINE_PATH = re.compile(r"(/work/|/tmp/|/home/|/root/|/Users/|/private/var/|site-packages)")


@pytest.mark.parametrize("doc", PAGES, ids=doc_id)
def test_no_absolute_machine_paths_in_blocks(doc: Path) -> None:
    lines = doc.read_text(encoding="utf-8").splitlines()
    inside = False
    for number, line in enumerate(lines, 1):
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if inside:
            found = MACHINE_PATH.search(line)
            assert found is None, (
                f"{doc_id(doc)}:{number}: {found.group(0)!r}: a path of the machine that "
                "produced this output (write <temporary directory>, <checkout>, ...)"
            )


LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def anchors(doc: Path) -> set[str]:
    """The heading anchors of a Markdown file, as GitHub and mkdocs spell them."""
    found = set()
    inside = False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("```"):
            inside = not inside
        elif not inside and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            title = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            found.add(title)
    return found


@pytest.mark.parametrize("doc", PAGES, ids=doc_id)
def test_relative_links_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # links in code are not links
    for match in LINK.finditer(text):
        target = match.group("target")
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        assert file.exists(), f"{doc_id(doc)}: link to a missing file: {target}"
        assert REPO in file.parents or file == REPO, f"{doc_id(doc)}: link out of the repo"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{doc_id(doc)}: no heading #{anchor} in {path}"


# --------------------------------------------------------------------------- claims


def test_schema_version_quoted_in_the_docs_is_the_code_s() -> None:
    from squidmesh.storage.base import SCHEMA_VERSION

    for doc in PAGES:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for quoted in re.findall(r"(?:expects version|schema is at version) (\d+)", line):
                assert int(quoted) == SCHEMA_VERSION, f"{doc_id(doc)}:{number}: version {quoted}"


def test_install_steps_start_with_a_virtualenv() -> None:
    venv = "python -m venv .venv && . .venv/bin/activate"
    for doc in (README, REPO / "docs" / "getting_started.md"):
        text = doc.read_text(encoding="utf-8")
        first_pip = text.index("pip install")
        assert venv in text[:first_pip], f"{doc_id(doc)}: create the virtualenv before pip"


# --------------------------------------------------------------------------- API reference

API_MODULES = {
    "squidmesh": "docs/reference/squidmesh.md",
    "squidmesh.testing": "docs/reference/testing.md",
    "squidmesh.analysis": "docs/reference/analysis.md",
    "squidmesh.contrib.fastapi": "docs/reference/contrib.md",
    "squidmesh.contrib.django": "docs/reference/contrib.md",
}


def test_api_reference_pages_cover_the_public_modules() -> None:
    for module, page in API_MODULES.items():
        assert f"::: {module}\n" in (REPO / page).read_text(encoding="utf-8"), page
    index = (REPO / "docs" / "index.md").read_text(encoding="utf-8")
    assert "(reference/squidmesh.md)" in index, "docs/index.md does not link the API reference"
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    for page in API_MODULES.values():
        assert page.removeprefix("docs/") in nav, page


def test_api_reference_builds_strictly_and_documents_every_public_name(tmp_path: Path) -> None:
    pytest.importorskip("mkdocstrings")
    import subprocess

    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert built.returncode == 0, built.stderr
    for module, page in API_MODULES.items():
        html = (site / page.removeprefix("docs/").removesuffix(".md") / "index.html").read_text()
        ids = set(re.findall(r'id="([^"]+)"', html))
        for name in importlib.import_module(module).__all__:
            if name.startswith("__"):
                continue
            assert {f"{module}.{name}", f"{module}.{name}.{name}"} & ids, f"{module}.{name}"
