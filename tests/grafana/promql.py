"""Just enough PromQL reading for the dashboard tests: which series a query selects (metric name
and label matchers), which labels it groups or joins on, and which functions it calls.

Not a full parser: it tokenises strings, ranges (``[...]``), matcher blocks (``{...}``),
identifiers and punctuation, which is what the checks need and what every expression on the
boards consists of.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

AGGREGATORS = {"sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
               "count_values", "group"}
FUNCTIONS = AGGREGATORS | {
    "rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear", "histogram_quantile",
    "time", "timestamp", "vector", "scalar", "absent", "absent_over_time", "sort", "sort_desc",
    "clamp", "clamp_min", "clamp_max", "abs", "ceil", "floor", "round", "changes", "resets",
    "label_replace", "label_join", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
    "count_over_time", "last_over_time", "quantile_over_time", "present_over_time",
}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN"}

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<punct>==|!=|>=|<=|=~|!~|[-+*/%^(){},=<>])
""", re.VERBOSE)

_MATCHER = re.compile(r"""\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*,?""")


@dataclass
class Selector:
    metric: str | None
    matchers: list[tuple[str, str, str]] = field(default_factory=list)  # (label, op, value without quotes)


@dataclass
class Parsed:
    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    unknown_functions: set[str] = field(default_factory=set)

    @property
    def metrics(self) -> set[str]:
        return {s.metric for s in self.selectors if s.metric}


def parse_matchers(block: str) -> list[tuple[str, str, str]]:
    """``{a="x", b=~"y"}`` (without braces) -> [(a, =, x), (b, =~, y)]; raises on what it cannot read."""
    out = []
    pos = 0
    block = block.strip()
    while pos < len(block):
        m = _MATCHER.match(block, pos)
        if not m:
            raise ValueError(f"cannot read label matchers {block!r} at {block[pos:]!r}")
        out.append((m.group(1), m.group(2), m.group(3)[1:-1]))
        pos = m.end()
    return out


def tokenize(expr: str) -> list[tuple[str, str]]:
    toks = []
    pos = 0
    while pos < len(expr):
        if expr[pos] == "{":
            depth_end = _matching_brace(expr, pos)
            toks.append(("matchers", expr[pos + 1:depth_end]))
            pos = depth_end + 1
            continue
        m = _TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot tokenise {expr!r} at {expr[pos:pos + 20]!r}")
        kind = m.lastgroup
        if kind != "ws":
            toks.append((kind, m.group()))
        pos = m.end()
    return toks


def _matching_brace(expr: str, start: int) -> int:
    i = start + 1
    quote = None
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "}":
            return i
        i += 1
    raise ValueError(f"unclosed {{ in {expr!r}")


def parse(expr: str) -> Parsed:
    toks = tokenize(expr)
    out = Parsed()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if kind == "ident" and text in GROUPING:
            if nxt == ("punct", "("):
                j = i + 2
                while j < len(toks) and toks[j] != ("punct", ")"):
                    if toks[j][0] == "ident":
                        out.grouping.add(toks[j][1])
                    j += 1
                i = j + 1
                continue
            i += 1
            continue
        if kind == "ident" and text in KEYWORDS:
            i += 1
            continue
        if kind == "ident" and (nxt == ("punct", "(") or (text in AGGREGATORS and nxt[1] in ("by", "without"))):
            (out.functions if text in FUNCTIONS else out.unknown_functions).add(text)
            i += 1
            continue
        if kind == "ident":
            sel = Selector(text)
            if nxt[0] == "matchers":
                sel.matchers = parse_matchers(nxt[1])
                i += 1
            out.selectors.append(sel)
            i += 1
            continue
        if kind == "matchers":  # {__name__="..."} without a metric name in front
            matchers = parse_matchers(text)
            names = [v for label, op, v in matchers if label == "__name__" and op == "="]
            out.selectors.append(Selector(names[0] if names else None, [m for m in matchers if m[0] != "__name__"]))
        i += 1
    return out
