"""The docs cannot go stale: their configuration references equal what the configs
generate, and their links to files in the repository resolve."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location(
        "docs_reference", ROOT / "scripts/docs_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_reference_section_equals_the_generated_one():
    script = _script()
    stale = []
    for rel in script.DOCS:
        text = (ROOT / rel).read_text()
        assert script.SECTION.search(text), f"{rel} has no reference section"
        if script.render(text) != text:
            stale.append(rel)
    assert not stale, f"run `python scripts/docs_reference.py` to regenerate: {stale}"


def test_a_reference_names_every_setting_and_the_arguments():
    script = _script()
    table = script.reference("clean")
    assert "| `normalize.max_side` | `--max-side` | 512 px | >= 16 |" in table
    assert "| `input_uri` | `INPUT_URI` (argument) |" in table
    assert "--input-uri" not in table


def test_links_between_the_docs_resolve():
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken
