"""A reader for the block-style YAML subset of Prometheus rule files and Grafana provisioning
files (PyYAML is not a dependency of the project): nested mappings, lists of mappings or
scalars, ``#`` comments, quoted and plain scalars, flow lists of scalars (``[a, "b"]``) and
folded / literal block scalars (``>-``, ``|``). Anything outside that subset raises ValueError,
so a file the tests cannot read fails loudly instead of being half-checked."""

from __future__ import annotations

import json
import re
from typing import Any

_KEY = re.compile(r"^([A-Za-z0-9_.\-]+|\"[^\"]*\"):(?:\s+(.*))?$")


def _strip_comment(line: str) -> str:
    out, quote = [], None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            break
        out.append(c)
    return "".join(out).rstrip()


def _scalar(text: str) -> Any:
    t = text.strip()
    if t == "" or t in ("~", "null"):
        return None
    if t.startswith('"'):
        return json.loads(t)
    if t.startswith("'"):
        if not t.endswith("'"):
            raise ValueError(f"unterminated string {t!r}")
        return t[1:-1].replace("''", "'")
    if t.startswith("["):
        if not t.endswith("]"):
            raise ValueError(f"unterminated flow list {t!r}")
        inner = t[1:-1].strip()
        return [] if not inner else [_scalar(p) for p in _split_flow(inner)]
    if t.startswith("{"):
        if t == "{}":
            return {}
        raise ValueError(f"flow mappings are not supported: {t!r}")
    if t in ("true", "True"):
        return True
    if t in ("false", "False"):
        return False
    if re.fullmatch(r"-?\d+", t):
        return int(t)
    if re.fullmatch(r"-?\d+\.\d*", t):
        return float(t)
    return t


def _split_flow(inner: str) -> list[str]:
    parts, cur, quote = [], [], None
    for c in inner:
        if quote:
            cur.append(c)
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
            cur.append(c)
        elif c == ",":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def loads(text: str) -> Any:
    raw = text.splitlines()
    lines: list[tuple[int, str, int]] = []  # (indent, content, raw index)
    for n, line in enumerate(raw):
        if "\t" in line[: len(line) - len(line.lstrip())]:
            raise ValueError(f"line {n + 1}: tab indentation")
        content = _strip_comment(line)
        if content.strip():
            lines.append((len(content) - len(content.lstrip()), content.strip(), n))
    pos = 0

    def block_scalar(style: str, parent_indent: int, start_raw: int) -> str:
        nonlocal pos
        body: list[str] = []
        indent = None
        n = start_raw + 1
        while n < len(raw):
            line = raw[n]
            if line.strip():
                ind = len(line) - len(line.lstrip())
                if ind <= parent_indent:
                    break
                indent = ind if indent is None else indent
                body.append(line[indent:])
            else:
                body.append("")
            n += 1
        while pos < len(lines) and lines[pos][2] < n:
            pos += 1
        while body and body[-1] == "":
            body.pop()
        if style.startswith(">"):
            text_out, para = [], []
            for b in body:
                if b == "":
                    text_out.append(" ".join(para))
                    para = []
                else:
                    para.append(b.strip())
            text_out.append(" ".join(para))
            return "\n".join(text_out)
        return "\n".join(body)

    def value(text: str, indent: int, raw_index: int) -> Any:
        nonlocal pos
        if text in (">", ">-", "|", "|-"):
            return block_scalar(text, indent, raw_index)
        if text == "":
            if pos < len(lines) and lines[pos][0] > indent:
                return node(lines[pos][0])
            if pos < len(lines) and lines[pos][0] == indent and lines[pos][1].startswith("- "):
                return node(indent)  # a list at the same indent as its key
            return None
        return _scalar(text)

    def mapping(indent: int, first: str | None = None, first_raw: int = 0) -> dict[str, Any]:
        nonlocal pos
        out: dict[str, Any] = {}
        pending = [(first, first_raw)] if first is not None else []
        while True:
            if pending:
                content, raw_index = pending.pop()
            else:
                if pos >= len(lines) or lines[pos][0] != indent or lines[pos][1].startswith("- "):
                    if pos < len(lines) and lines[pos][0] > indent:
                        raise ValueError(f"line {lines[pos][2] + 1}: unexpected indentation")
                    return out
                _, content, raw_index = lines[pos]
                pos += 1
            m = _KEY.match(content)
            if not m:
                raise ValueError(f"line {raw_index + 1}: expected 'key: value', got {content!r}")
            key = json.loads(m.group(1)) if m.group(1).startswith('"') else m.group(1)
            out[key] = value((m.group(2) or "").strip(), indent, raw_index)

    def sequence(indent: int) -> list[Any]:
        nonlocal pos
        out: list[Any] = []
        while pos < len(lines) and lines[pos][0] == indent and lines[pos][1].startswith("- "):
            _, content, raw_index = lines[pos]
            pos += 1
            item = content[2:].strip()
            if _KEY.match(item):
                out.append(mapping(indent + 2, item, raw_index))
            else:
                out.append(_scalar(item))
        return out

    def node(indent: int) -> Any:
        if lines[pos][1].startswith("- "):
            return sequence(indent)
        return mapping(indent)

    if not lines:
        return None
    result = node(lines[0][0])
    if pos != len(lines):
        raise ValueError(f"line {lines[pos][2] + 1}: cannot read {lines[pos][1]!r}")
    return result
