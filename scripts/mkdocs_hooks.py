"""MkDocs hooks for the sccbgm docs (mkdocs.yml, ``hooks:``).

* The home page is README.md itself (``docs/index.md`` is a placeholder): its links, written for
  the repository (``docs/x.md``, ``ARCHITECTURE.md``), are rewritten for the site, so strict mode
  checks the README's links too and the front page is written once.
* Pages under ``docs/`` that ``nav`` does not list are appended under "More" (titled by their
  first heading), so a new page shows up without editing mkdocs.yml.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# README link target -> site path (relative to docs/)
_README_LINKS = ((re.compile(r"\]\(docs/"), "]("), (re.compile(r"\]\(ARCHITECTURE\.md\)"), "](architecture.md)"))


def _nav_files(items: Any) -> set[str]:
    if isinstance(items, str):
        return {items}
    values = items.values() if isinstance(items, dict) else items if isinstance(items, list) else []
    return set().union(*(_nav_files(v) for v in values)) if values else set()


def _title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem.replace("-", " ").capitalize()


def on_config(config: Any) -> Any:
    docs = Path(config["docs_dir"])
    if config["nav"] is not None:
        listed = _nav_files(config["nav"])
        extra = sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.md"))
        extra = [p for p in extra if p not in listed]
        if extra:
            config["nav"].append({"More": [{_title(docs / p): p} for p in extra]})
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri != "index.md":
        return markdown
    readme = Path(config["config_file_path"]).parent / "README.md"
    text = readme.read_text(encoding="utf-8")
    for pattern, replacement in _README_LINKS:
        text = pattern.sub(replacement, text)
    return text
