"""Prompt templates live here as text files, one per prompt; code only fills them in.

A template has `[system]` and/or `[user]` sections; `$name` placeholders are filled with
`string.Template`, so braces, JSON or template markers inside user text stay literal. The
templates of one domain may live in that domain's folder; `render_file` and `file_hash` take
any template file by path; `render` takes the ones here by name.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from string import Template

from fspo_data.core.chat import ChatMessage

PROMPT_DIR = Path(__file__).parent
_ROLES = ("system", "user")


@cache
def _sections(path: Path) -> tuple[tuple[str, Template], ...]:
    sections: list[tuple[str, list[str]]] = []
    for line in path.read_text().splitlines():
        header = line.strip()
        if header.startswith("[") and header.endswith("]") and header[1:-1] in _ROLES:
            sections.append((header[1:-1], []))
        elif sections:
            sections[-1][1].append(line)
        elif line.strip() and not line.startswith("#"):
            raise ValueError(f"{path}: text before the first [system]/[user] section")
    return tuple((role, Template("\n".join(lines).strip())) for role, lines in sections)


def render_file(path: Path, **values: str) -> list[ChatMessage]:
    """The chat messages of the template file `path` with every `$placeholder` filled."""
    return [ChatMessage(role=role, content=t.substitute(values)) for role, t in _sections(path)]


def file_hash(path: Path) -> str:
    """Short content hash, recorded in manifests so a dataset card can name the prompts used."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def template_path(name: str) -> Path:
    """This package's template `name`."""
    return PROMPT_DIR / f"{name}.txt"


def render(name: str, **values: str) -> list[ChatMessage]:
    """`render_file` of this package's template `name`."""
    return render_file(template_path(name), **values)
