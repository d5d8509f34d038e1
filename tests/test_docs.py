"""The documentation: the README stays a front page, every page of docs/ is in the site's nav, and
every command block marked as tested runs, as shown, on the built-in sample data.

Marks, on the line right before a ```bash fence, in README.md and docs/*.md:

    <!-- tested: NAME -->          the block runs here; the blocks of one NAME run in one fresh
                                   directory, in page order (README first, then mkdocs.yml's nav)
    <!-- not tested: REASON -->    a block that uses the sample data but cannot run here (a GPU, a
                                   cluster, an object store, a 50-minute budget), and why

A block that uses the sample data (`SAMPLE_DATA`) must carry one of the two.

How a block runs: `bash -eu -o pipefail -c BLOCK`, the text exactly as the page shows it, with the
virtualenv's `bin/` first on PATH (so `segdist`, `accelerate` and `python` are this checkout's) and
the working directory a fresh stand-in for the repository root: `configs/` and `launch/` link to
the checkout's, and `../shared` to the real data beside it, so the relative paths of the docs hold
while the outputs (`shards/`, `runs/`, ...) land in the test's temporary directory, never in the
checkout. After each block, every path a comment points to with `-> PATH` must exist.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import shared_data

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 210
SAMPLE_DATA = ("configs/demo.yaml", "shards/demo", "runs/demo", "segdist synth", "../shared/data",
               "shards/camvid", "shards/mydata")
TESTED = re.compile(r"<!-- tested: ([\w-]+) -->")
NOT_TESTED = re.compile(r"<!-- not tested: [^>]+ -->")
LINKED = ("configs", "launch")  # what the blocks read from the checkout


def nav_pages() -> list[str]:
    """The pages of mkdocs.yml's nav, in order (sections flattened)."""
    def walk(items) -> list[str]:  # noqa: ANN001
        out = []
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            out += walk(value) if isinstance(value, list) else [value]
        return out

    return walk(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"])


def pages() -> list[Path]:
    """README.md, then the docs pages in nav order: the order the blocks of one NAME run in."""
    return [REPO / "README.md"] + [REPO / "docs" / page for page in nav_pages()]


def bash_blocks(page: Path) -> list[tuple[str, int, str]]:
    """(the line before the fence, the fence's line number, the block's text) for each ```bash block."""
    lines = page.read_text().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if lines[i].strip() == "```bash":
                blocks.append((lines[i - 1] if i else "", i + 1, "\n".join(lines[i + 1:end]) + "\n"))
            i = end
        i += 1
    return blocks


def scenarios() -> dict[str, list[tuple[str, str]]]:
    """NAME -> [(where, block), ...] in run order."""
    out: dict[str, list[tuple[str, str]]] = {}
    for page in pages():
        for before, line, text in bash_blocks(page):
            if match := TESTED.fullmatch(before.strip()):
                out.setdefault(match.group(1), []).append((f"{page.relative_to(REPO)}:{line}", text))
    return out


def test_the_readme_is_a_front_page():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, "README.md is the front page: move details to docs/"
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert [line.split("#")[0].strip() for line in first_block[:2]] == ["make demo", "make test"]
    assert "## From Python" in text  # tests/test_api.py runs its code block
    for page in nav_pages():
        assert f"(docs/{page}" in text, f"the README links no docs/{page}"


def test_every_docs_page_is_in_the_nav():
    nav = nav_pages()
    assert len(nav) == len(set(nav)), nav
    on_disk = sorted(str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md"))
    assert sorted(nav) == on_disk, "mkdocs.yml's nav and the pages in docs/ differ"
    assert nav[0] == "index.md"


def test_every_sample_data_block_is_marked():
    unmarked, stray = [], []
    for page in pages():
        text = page.read_text()
        for before, line, block in bash_blocks(page):
            marked = TESTED.fullmatch(before.strip()) or NOT_TESTED.fullmatch(before.strip())
            if not marked and any(s in block for s in SAMPLE_DATA):
                unmarked.append(f"{page.relative_to(REPO)}:{line}")
        # a mark belongs on the line right before a ```bash fence, nowhere else
        for match in re.finditer(r"^<!-- (not )?tested:[^\n]*\n(.*)", text, re.M):
            if match.group(2).strip() != "```bash":
                stray.append(f"{page.relative_to(REPO)}: {match.group(0).splitlines()[0]}")
    assert not unmarked, f"sample-data blocks without <!-- tested: NAME --> or <!-- not tested: why -->: {unmarked}"
    assert not stray, f"marks not right before a ```bash fence: {stray}"
    assert {"demo", "datasets", "own-dataset"} <= set(scenarios())


def arrow_paths(block: str) -> list[str]:
    """The paths the block's comments point to: `# ... -> runs/demo/export/model.onnx`."""
    return [m.rstrip(".,;)") for line in block.splitlines() if "#" in line
            for m in re.findall(r"->\s*([\w.-]+/[\w./<>-]*)", line.split("#", 1)[1])]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(scenarios()))
def test_the_docs_commands_run_as_shown(name, tmp_path):
    blocks = scenarios()[name]
    for data in sorted({m for _, block in blocks for m in re.findall(r"\.\./shared/data/([\w-]+)", block)}):
        shared_data(data)  # skips locally without the real data, fails in CI
    root = tmp_path / "repo"
    root.mkdir()
    for entry in LINKED:
        (root / entry).symlink_to(REPO / entry)
    if (REPO.parent / "shared").exists():
        (tmp_path / "shared").symlink_to(REPO.parent / "shared")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONUNBUFFERED="1")
    for where, block in blocks:
        result = subprocess.run(["bash", "-eu", "-o", "pipefail", "-c", block], cwd=root, env=env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, (f"{where} failed (exit {result.returncode}):\n{block}\n--- stdout ---\n"
                                        f"{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-5000:]}")
        for path in arrow_paths(block):
            if "<" not in path:  # a pattern such as class_hist_<split>.png names no one file
                assert (root / path).exists(), f"{where}: a comment says -> {path}, which is missing"


def test_every_prepare_source_has_its_section_in_datasets():
    """SOURCES is the one list of sources: each has a heading in datasets.md whose section shows its command."""
    from segdist.prepare.sources import SOURCES

    sections = re.split(r"^## ", (REPO / "docs/datasets.md").read_text(), flags=re.M)
    for name in SOURCES:
        assert any(f"segdist prepare {name} " in section for section in sections[1:]), \
            f"docs/datasets.md has no section showing `segdist prepare {name}`"
