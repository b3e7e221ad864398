"""Every relative link in README.md and docs/*.md reaches a file, and every
#anchor a heading of it (GitHub's heading slugs); the README's Python
example fits the README's example catalog."""

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"#+\s+(.*)", line)
        if match:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_and_anchor_in_the_docs_resolves() -> None:
    broken = []
    for document in _documents():
        text = document.read_text(encoding="utf-8")
        for match in LINK.finditer(text):
            target = match.group(1)
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (document.parent / path).resolve() if path else document
            line = text.count("\n", 0, match.start()) + 1
            where = f"{document.relative_to(ROOT)}:{line}: {target}"
            if not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif (
                anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved)
            ):
                broken.append(f"{where} (no such heading)")
    assert broken == []


def test_the_readme_python_example_asks_for_a_server_of_the_example_catalog() -> None:
    """It asked for "github", which examples/ledger.toml (the README's
    catalog) does not name, and printed the result without checking it, so
    it printed None. (It was run against `serve` with that catalog.)"""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    example = next(b for b in blocks if "request_resources" in b)
    ast.parse(example)
    catalog = tomllib.loads((ROOT / "examples" / "ledger.toml").read_text())
    for servers in re.findall(r'"mcp_servers": (\[[^]]*\])', example):
        assert set(ast.literal_eval(servers)) <= set(catalog["mcp_servers"])
    assert "if result.is_error:" in example
