"""MkDocs hook: pages include sections of README.md and ARCHITECTURE.md.

A line ``<!-- readme: Heading -->`` is replaced by that README section (from
its heading to the next heading of the same or a higher level, the heading
itself left out), and ``<!-- include: FILE -->`` by a whole file of the
repository root.  Links written for the repository root (``docs/...``,
``ARCHITECTURE.md``) are rewritten for the site, so the README stays the one
source of these texts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
_DIRECTIVE = re.compile(r"^<!-- (readme|include): (.+?) -->$", re.M)


def section(text: str, heading: str) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^(#+) (.*)$", line)
        if match and match.group(2).strip() == heading:
            level = len(match.group(1))
            body = []
            in_code = False
            for rest in lines[i + 1 :]:
                if rest.startswith("```"):
                    in_code = not in_code
                found = None if in_code else re.match(r"^(#+) ", rest)
                if found and len(found.group(1)) <= level:
                    break
                body.append(rest)
            return "\n".join(body).strip("\n")
    raise ValueError(f"README.md has no section {heading!r}")


def site_links(text: str) -> str:
    text = text.replace("](docs/", "](")
    return text.replace("](ARCHITECTURE.md)", "](architecture.md)")


def on_page_markdown(markdown: str, **_: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        kind, what = match.group(1), match.group(2).strip()
        if kind == "readme":
            return site_links(section((ROOT / "README.md").read_text("utf-8"), what))
        text = (ROOT / what).read_text("utf-8")
        return site_links(text)

    return _DIRECTIVE.sub(replace, markdown)


_ROLE = re.compile(r":(?:class|meth|func|attr|mod|exc|data|obj):(<code>)~?")


def on_page_content(html: str, **_: Any) -> str:
    """Docstrings use Sphinx roles (``:class:`X```); on the site they read as code."""
    return _ROLE.sub(r"\1", html)
