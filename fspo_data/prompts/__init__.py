"""Prompt templates live here as text files, one per prompt; code only fills them in.

A template has `[system]` and/or `[user]` sections; `$name` placeholders are filled with
`string.Template`, so braces, JSON or template markers inside user text stay literal.
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
def _sections(name: str) -> tuple[tuple[str, Template], ...]:
    path = PROMPT_DIR / f"{name}.txt"
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


def render(name: str, **values: str) -> list[ChatMessage]:
    """The chat messages of template `name` with every `$placeholder` filled."""
    return [ChatMessage(role=role, content=t.substitute(values)) for role, t in _sections(name)]


def template_hash(name: str) -> str:
    """Short content hash, recorded in manifests so a dataset card can name the prompts used."""
    return hashlib.sha256((PROMPT_DIR / f"{name}.txt").read_bytes()).hexdigest()[:12]
