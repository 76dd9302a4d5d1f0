"""A real English text corpus available offline on any machine with Python: the docstrings and
comments of the Python standard library, split into sentences.

Sentences are assigned to the train or held-out set by their *module* (a stable hash of its name),
so no held-out sentence comes from a file the student saw: near-duplicate phrasings inside one
module cannot leak across the split.

    train, held_out = stdlib_sentences(held_out_fraction=0.1)      # lists of (module, sentence)
"""

from __future__ import annotations

import ast
import hashlib
import io
import re
import sysconfig
import tokenize
from pathlib import Path

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_WORD = re.compile(r"[A-Za-z]{2,}")


def _texts(source: str) -> list[str]:
    """Docstrings (module, class, function) and comments of one file, as paragraphs."""
    out: list[str] = []
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return out
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                out.extend(p for p in re.split(r"\n\s*\n", doc))
    comment: list[str] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                text = tok.string.lstrip("#").strip()
                if text and not text.startswith(("!", "-*-", "noqa", "type:", "pragma")):
                    comment.append(text)
                    continue
            if comment and tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT):
                out.append(" ".join(comment))
                comment = []
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    if comment:
        out.append(" ".join(comment))
    return out


def _sentences(paragraph: str) -> list[str]:
    text = " ".join(paragraph.split())
    keep = []
    for s in _SENTENCE_END.split(text):
        s = s.strip()
        words = _WORD.findall(s)
        # prose, not code or tables: enough words, mostly letters, not too long for a sentence encoder
        if 4 <= len(words) and 24 <= len(s) <= 300 and sum(len(w) for w in words) >= 0.6 * len(s):
            keep.append(s)
    return keep


def _held_out(module: str, fraction: float) -> bool:
    return int(hashlib.sha256(module.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def stdlib_sentences(held_out_fraction: float = 0.1) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held_out): unique sentences with their module, split by module; sorted, so the same
    Python gives the same corpus."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    train, held = [], []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("site-packages", "dist-packages", "encodings") or "test" in rel.parts[0] \
                or "tests" in rel.parts:  # tests: code, not prose; encodings: character tables
            continue
        module = ".".join(rel.with_suffix("").parts)
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for paragraph in _texts(source):
            for s in _sentences(paragraph):
                if s not in seen:
                    seen.add(s)
                    (held if _held_out(module, held_out_fraction) else train).append((module, s))
    return train, held
