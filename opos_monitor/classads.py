"""Fast streaming reader for job ads written as text.

Formats, detected from the first non-blank character:

* ``[`` followed by ``{`` or ``]``: a JSON array (``condor_q -json``,
  ``condor_history -json``);
* ``{``: JSON lines (one object per line; pretty-printed consecutive objects
  are accepted too);
* ``[`` followed by a name: "new" ClassAd syntax (``[ a = 1; b = "x" ]``),
  handed ad by ad to ``classad2.parseOne``;
* anything else: old ClassAd "long" format, ``Attr = value`` lines, ads split
  by blank lines (``condor_q -long``), ``*** ...`` banner lines (raw schedd
  history files, one banner after each ad) or ``-- ...`` header lines.

Values become Python values: ints (any size), floats, bools, ``None`` for
``undefined``, :data:`ERROR` for ``error``, ``str`` for string literals,
``list`` for lists of literals, ``dict`` for nested ads of literals, and :class:`Expr` (a ``str`` holding the
expression text) for everything else, so nothing is lost.  JSON values
written as ``"/Expr(...)/"`` get the same treatment.

Old ClassAd strings follow HTCondor's own lexer (``tokenizeStringOld``): a
backslash is literal except in ``\\"``, which is a quote unless it ends the
value (then the string ends with a backslash).  ``\\n`` is two characters.
Raw newlines inside strings cannot be represented in this format (HTCondor's
own parser rejects them too): such a value is reported as unterminated.

The reader never raises for bad input.  Every problem goes to the ``errors``
callback as a :class:`ReadError` and reading carries on: in long format only
the bad line is skipped, in JSON only the bad object.  The last ad of a file
is yielded even without a trailing separator, and a truncated last ad is
yielded with the attributes that were read before the cut.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterator, Mapping, Optional, Union

try:  # orjson is a dependency; keep working without it
    from orjson import JSONDecodeError as _OrjsonError
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover
    _fast_loads = None
    _OrjsonError = ValueError

__all__ = ["ERROR", "Expr", "ReadError", "parse_value", "plain_ad", "plain_value", "read_ads", "read_path"]

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_MAX_INT_DIGITS = 4000  # int() refuses more than sys.int_info.default_max_str_digits


class Expr(str):
    """A ClassAd expression that is not a literal, kept as its text."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Expr({str.__repr__(self)})"


class _ErrorValue:
    """The ClassAd ``error`` literal (one instance: :data:`ERROR`)."""

    __slots__ = ()
    _instance: Optional["_ErrorValue"] = None

    def __new__(cls) -> "_ErrorValue":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ERROR"

    def __str__(self) -> str:
        return "error"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "ERROR"


ERROR = _ErrorValue()


@dataclass(frozen=True)
class ReadError:
    """One problem found while reading: where, what, and the offending text."""

    name: str
    line: int
    message: str
    snippet: str

    def __str__(self) -> str:
        return f"{self.name}:{self.line}: {self.message}: {self.snippet!r}"


ErrorCallback = Callable[[ReadError], None]


def _log_error(err: ReadError) -> None:
    log.warning("%s", err)


class _Invalid:
    """Returned by value parsers for text that is not a value at all."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


# ---------------------------------------------------------------------------
# values (old ClassAd syntax)

_INT_RE = re.compile(r"-?[0-9]+")
_REAL_RE = re.compile(r"-?(?:[0-9]+\.[0-9]+(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+)")
_WORDS = {"true": True, "false": False, "undefined": None, "error": ERROR}
_SPECIAL_REALS = {
    'real("INF")': float("inf"),
    'real("-INF")': float("-inf"),
    'real("NaN")': float("nan"),
    'real("-NaN")': float("nan"),
}
_SNIPPET = 200


def _snip(text: str) -> str:
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


def _old_string(v: str) -> tuple[Optional[str], int]:
    """Scan an old-syntax string literal at v[0]; return (value, end index).

    value is None when the string is unterminated.
    """
    parts = []
    start = i = 1
    n = len(v)
    while True:
        j = v.find('"', i)
        if j < 0:
            return None, n
        if j > start and v[j - 1] == "\\" and j + 1 < n:
            parts.append(v[start : j - 1])
            parts.append('"')
            start = i = j + 1
            continue
        parts.append(v[start:j])
        return "".join(parts), j + 1


_STRUCTURE = re.compile(r'"(?:\\"|[^"])*"|[\[\]{}(),;]')
_NESTED_ATTR = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(?![=?!])\s*(.*?)\s*", re.S)


def _split_top(body: str, sep: str) -> list[str]:
    """Split at ``sep`` outside strings and brackets."""
    parts, depth, start = [], 0, 0
    for m in _STRUCTURE.finditer(body):
        t = m.group()
        if t[0] == '"':
            continue
        if t in "([{":
            depth += 1
        elif t in ")]}":
            depth -= 1
        elif t == sep and depth == 0:
            parts.append(body[start : m.start()])
            start = m.end()
    parts.append(body[start:])
    return parts


def _is_literal(x: Any) -> bool:
    return not isinstance(x, (Expr, _Invalid))


def _list_literal(body: str) -> Optional[list]:
    """``{ a, b }`` (inside given) as a list if every item is a literal."""
    if not body.strip():
        return []
    items = [parse_value(part) for part in _split_top(body, ",")]
    return items if all(map(_is_literal, items)) else None


def _nested_ad(body: str) -> Optional[dict]:
    """``[ a = 1; b = "x" ]`` (inside given) as a dict if every value is a literal."""
    ad = {}
    parts = _split_top(body, ";")
    if parts and not parts[-1].strip():
        parts.pop()
    for part in parts:
        m = _NESTED_ATTR.fullmatch(part)
        if m is None:
            return None
        x = parse_value(m.group(2))
        if not _is_literal(x):
            return None
        ad[m.group(1)] = x
    return ad


def parse_value(text: str) -> Any:
    """Convert one old-syntax value text to a Python value (Expr if not a literal).

    Returns an internal invalid marker for text that cannot be a value
    (empty, unterminated string); :func:`read_ads` reports those.
    """
    v = text.strip()
    if not v:
        return _Invalid("empty value")
    c = v[0]
    if c == '"':
        s, end = _old_string(v)
        if s is None:
            return _Invalid("unterminated string")
        return s if end == len(v) else Expr(v)
    if c.isdigit() or c in "-.":
        if _INT_RE.fullmatch(v):
            return int(v) if len(v) <= _MAX_INT_DIGITS else Expr(v)
        if _REAL_RE.fullmatch(v):
            return float(v)
        return Expr(v)
    w = _WORDS.get(v.lower(), _Invalid) if len(v) <= 9 else _Invalid
    if w is not _Invalid:
        return w
    if c == "r":
        r = _SPECIAL_REALS.get(v)
        if r is not None:
            return r
    elif c == "{" and v[-1] == "}":
        items = _list_literal(v[1:-1])
        if items is not None:
            return items
    elif c == "[" and v[-1] == "]":
        ad = _nested_ad(v[1:-1])
        if ad is not None:
            return ad
    return Expr(v)


# ---------------------------------------------------------------------------
# long format

_DIGITS = "0123456789"
_NAMES_OK = re.compile(r"\w*", re.ASCII).fullmatch
_ATTR_LINE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(?![=?!])\s*(.*)$")


def _fast_ad(lines: list[str]) -> Optional[dict[str, Any]]:
    """Parse well-formed ``Attr = value`` lines; None if anything is unusual."""
    ad: dict[str, Any] = {}
    try:
        for line in lines:
            k, _, v = line.partition(" = ")
            c = v[0]
            if c == '"':
                if v[-1] == '"' and v.count('"') == 2:
                    ad[k] = v[1:-1]
                    continue
            elif c in _DIGITS:
                if v.isdigit():
                    try:
                        ad[k] = int(v)
                        continue
                    except ValueError:  # non-ASCII digits, or too many
                        pass
                elif v[-1] in _DIGITS and v.isascii() and "_" not in v:
                    try:  # float() accepts more than ClassAd reals only in ways excluded above
                        ad[k] = float(v)
                        continue
                    except ValueError:
                        pass
            elif v == "true":
                ad[k] = True
                continue
            elif v == "false":
                ad[k] = False
                continue
            x = parse_value(v)
            if x.__class__ is _Invalid:
                return None
            ad[k] = x
    except IndexError:  # a line without " = " or with an empty value
        return None
    if "" in ad or not _NAMES_OK("".join(ad)):
        return None
    return ad


class _LongReader:
    """One long-format stream: splits lines into ads, reports bad lines."""

    def __init__(self, name: str, report: ErrorCallback) -> None:
        self.name = name
        self.report = report

    def careful(self, lines: list[str], first: int) -> Iterator[dict[str, Any]]:
        """Line-by-line parse reporting errors; may yield several ads."""
        ad: dict[str, Any] = {}
        for n, line in enumerate(lines, first):
            s = line.strip()
            if not s or s.startswith("***") or s.startswith("-- "):
                if ad:
                    yield ad
                    ad = {}
                continue
            m = _ATTR_LINE.match(line)
            x = parse_value(m.group(2)) if m else _Invalid("not an 'Attr = value' line")
            if x.__class__ is _Invalid:
                self.report(ReadError(self.name, n, x.message, _snip(line)))
                continue
            ad[m.group(1)] = x  # type: ignore[union-attr]
        if ad:
            yield ad

    def runs(self, lines: list[str], first: int, carry: Optional[list] = None) -> Iterator[dict[str, Any]]:
        """Ads from runs of lines split by '' (lines[j] is line first+j).

        With ``carry`` (a list), the final run is not parsed: it may continue
        in the next chunk, so it is stored in ``carry`` as [lines, first line].
        """
        i, n = 0, len(lines)
        while True:
            try:
                j = lines.index("", i)
            except ValueError:
                j = n
            if j >= n and carry is not None:
                carry[0], carry[1] = lines[i:], first + i
                return
            if j > i:
                run = lines[i:j]
                ad = _fast_ad(run)
                if ad is None:
                    yield from self.careful(run, first + i)
                else:
                    yield ad
            if j >= n:
                return
            i = j + 1

    def chunk(self, chunk: str, ln: int, carry: list) -> Iterator[dict[str, Any]]:
        """Ads in ``chunk`` (whole lines, the first is line ``ln``).

        ``carry`` is [lines, first line] of an unfinished ad from the previous
        chunk; it is replaced by this chunk's unfinished tail.
        """
        pieces = chunk.split("\n***")
        last = len(pieces) - 1
        for p, piece in enumerate(pieces):
            lines = piece.split("\n")
            first = ln
            ln += len(lines)
            if p or lines[0][:3] == "***":
                lines[0] = ""  # the banner line (or what the split left of it)
            if p == 0 and carry[0]:
                lines = carry[0] + lines
                first = carry[1]
            if p == last:
                carry[2] = ln - 1  # the chunk ends with a newline
                if lines[-1] == "":
                    lines.pop()  # after the chunk's final newline: not a line
                yield from self.runs(lines, first, carry)
            elif lines[0] == "" and lines.count("") == 1:  # one ad before a banner: the usual case
                del lines[0]
                ad = _fast_ad(lines)
                if ad is None:
                    yield from self.careful(lines, first + 1)
                elif ad:
                    yield ad
            else:
                yield from self.runs(lines, first)


def _read_long(stream: IO[str], head: str, name: str, report: ErrorCallback) -> Iterator[dict[str, Any]]:
    reader = _LongReader(name, report)
    carry: list = [[], 1, 1]  # unfinished ad's lines, its first line, next chunk's first line
    ln = 1
    chunk = head
    while chunk:
        if chunk[-1] != "\n":
            chunk += stream.readline()
        if "\r" in chunk:
            chunk = chunk.replace("\r\n", "\n")
        yield from reader.chunk(chunk, ln, carry)
        ln = carry[2]
        chunk = stream.read(CHUNK)
    if carry[0]:
        yield from reader.runs(carry[0], carry[1])


# ---------------------------------------------------------------------------
# JSON (array or lines)

_json_decoder = json.JSONDecoder()
_EXPR_PREFIX = "/Expr("


def _fix_exprs(value: Any) -> Any:
    """Turn condor's ``"/Expr(...)/"`` strings into values/Expr, recursively."""
    if isinstance(value, str):
        if value.startswith(_EXPR_PREFIX) and value.endswith(")/"):
            x = parse_value(value[6:-2])
            return Expr(value[6:-2]) if x.__class__ is _Invalid else x
        return value
    if isinstance(value, list):
        return [_fix_exprs(x) for x in value]
    if isinstance(value, dict):
        return {k: _fix_exprs(x) for k, x in value.items()}
    return value


def _fix_top_exprs(obj: dict, n: int) -> None:
    """Convert "/Expr(...)/" values in place; ``n`` is how many the text holds."""
    keys = [k for k, v in obj.items() if v.__class__ is str and v[:6] == _EXPR_PREFIX]
    for k in keys:
        obj[k] = _fix_exprs(obj[k])
    if len(keys) < n:  # some are inside lists or nested ads (or in plain text)
        for k, v in obj.items():
            if v.__class__ is list or v.__class__ is dict:
                obj[k] = _fix_exprs(v)


def _maybe_big_int(value: Any) -> bool:
    """True if a float of integer size beyond 64 bits is anywhere in value."""
    for v in value.values() if value.__class__ is dict else value:
        cls = v.__class__
        if cls is float:
            if v >= 9.2e18 or v <= -9.2e18:
                return True
        elif (cls is dict or cls is list) and _maybe_big_int(v):
            return True
    return False


class _JsonReader:
    """Incremental reader of a stream of JSON objects (array or lines)."""

    def __init__(self, stream: IO[str], head: str, name: str, report: ErrorCallback) -> None:
        self.stream, self.buf, self.pos = stream, head, 0
        self.name, self.report = name, report
        self.eof = False
        self.dropped_lines = 0  # newlines in text already discarded

    def more(self) -> bool:
        """Read more text; False at end of input."""
        if self.eof:
            return False
        data = self.stream.read(max(CHUNK, len(self.buf) - self.pos))
        if not data:
            self.eof = True
            return False
        if self.pos:
            self.dropped_lines += self.buf.count("\n", 0, self.pos)
        self.buf = self.buf[self.pos :] + data
        self.pos = 0
        return True

    def line_at(self, pos: int) -> int:
        return self.dropped_lines + self.buf.count("\n", 0, pos) + 1

    def error(self, pos: int, message: str) -> None:
        end = self.buf.find("\n", pos)
        snippet = self.buf[pos : end if end >= 0 else len(self.buf)]
        self.report(ReadError(self.name, self.line_at(pos), message, _snip(snippet)))

    def skip_punct(self) -> bool:
        """Skip whitespace and array punctuation; False at end of input."""
        while True:
            buf, i, n = self.buf, self.pos, len(self.buf)
            while i < n and buf[i] in " \t\r\n,[]":
                i += 1
            self.pos = i
            if i < n:
                return True
            if not self.more():
                return False

    def resync(self) -> None:
        """Skip to the next line that starts an object."""
        while True:
            j = self.buf.find("\n{", self.pos + 1)
            if j >= 0:
                self.pos = j + 1
                return
            self.pos = max(self.pos, len(self.buf) - 1)
            if not self.more():
                self.pos = len(self.buf)
                return

    def try_fast(self) -> Optional[tuple[Any, int, int]]:
        """orjson on candidate object ends ("}" before a newline)."""
        if _fast_loads is None:
            return None
        buf, start = self.buf, self.pos
        end = start
        for _ in range(8):
            end = buf.find("}\n", end)
            if end < 0:
                if buf.endswith("}") and self.eof:
                    end = len(buf) - 1
                else:
                    return None
            try:
                obj = _fast_loads(buf[start : end + 1])
            except _OrjsonError:
                end += 1
                if end >= len(buf):
                    return None
                continue
            if _maybe_big_int(obj):  # orjson turns integers beyond 64 bits into floats
                return None
            return obj, start, end + 1
        return None

    def decode(self) -> Optional[tuple[Any, int, int]]:
        """Decode the object at pos with the stdlib, reading more if it is cut."""
        while True:
            try:
                obj, end = _json_decoder.raw_decode(self.buf, self.pos)
                return obj, self.pos, end
            except json.JSONDecodeError as e:
                near_end = e.pos >= len(self.buf) - 64 or e.msg.startswith("Unterminated string")
                if near_end and self.more():
                    continue
                self.error(self.pos, f"invalid JSON object: {e.msg} at line {self.line_at(e.pos)}")
                return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self.skip_punct():
            if self.buf[self.pos] != "{":
                self.error(self.pos, "expected a JSON object")
                self.resync()
                continue
            got = self.try_fast() or self.decode()
            if got is None:
                self.resync()
                continue
            obj, start, self.pos = got
            n = self.buf.count("Expr(", start, self.pos)
            if n:
                _fix_top_exprs(obj, n)
            yield obj


# ---------------------------------------------------------------------------
# new ClassAd syntax (nice to have): split into ads, parse each with classad2

_NEW_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[\[\]]')


def plain_value(value: Any) -> Any:
    """A value from the HTCondor bindings (classad2 or classad) as a plain value.

    ``ExprTree`` becomes :class:`Expr`, ``Value.Undefined`` ``None``,
    ``Value.Error`` :data:`ERROR`, a nested ``ClassAd`` a dict; lists are
    converted item by item.  Plain values are returned unchanged.
    """
    cls = value.__class__
    if cls in _PLAIN_TYPES or value is ERROR:
        return value
    kind = cls.__name__
    if kind == "ExprTree":
        return Expr(str(value))
    if kind == "Value":  # the bindings' Undefined/Error enum
        return ERROR if str(getattr(value, "name", value)).rpartition(".")[2].lower() == "error" else None
    if isinstance(value, Mapping):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    return value


def plain_ad(ad: Mapping[str, Any]) -> dict[str, Any]:
    """Any job ad mapping (e.g. a ``classad2.ClassAd``) as a dict of plain values."""
    d = dict(ad.items())
    if not set(map(type, d.values())) <= _PLAIN_TYPES:
        d = {k: plain_value(v) for k, v in d.items()}
    return d


_PLAIN_TYPES = frozenset({str, int, float, bool, type(None), Expr})


def _read_new(stream: IO[str], head: str, name: str, report: ErrorCallback) -> Iterator[dict[str, Any]]:
    import classad2  # only this rare format needs the bindings

    depth, parts, start = 0, [], 1
    lines = io.StringIO(head)
    line_no = 0
    while True:
        line = lines.readline()
        if not line:
            line = stream.readline()
            if not line:
                break
        line_no += 1
        if depth == 0 and not parts and not line.strip():
            continue
        if not parts:
            start = line_no
        parts.append(line)
        for m in _NEW_TOKENS.finditer(line):
            t = m.group()
            depth += 1 if t == "[" else -1 if t == "]" else 0
        if depth <= 0 and parts:
            text = "".join(parts)
            parts, depth = [], 0
            try:
                ad = classad2.parseOne(text, classad2.ParserType.New)
                yield {k: plain_value(v) for k, v in ad.items()}
            except Exception as e:  # classad2 raises several types
                report(ReadError(name, start, f"invalid new-syntax ClassAd: {e}", _snip(text)))
    if parts:
        report(ReadError(name, start, "truncated new-syntax ClassAd", _snip("".join(parts))))


# ---------------------------------------------------------------------------
# entry points


def _detect(head: str) -> str:
    s = head.lstrip()
    if not s:
        return "long"
    if s[0] == "{":
        return "json"
    if s[0] == "[":
        rest = s[1:].lstrip()
        return "json" if not rest or rest[0] in "{]" else "new"
    return "long"


def read_ads(stream: IO[str], name: str = "<stdin>", errors: Optional[ErrorCallback] = None) -> Iterator[dict[str, Any]]:
    """Yield each ad in ``stream`` (text; binary is decoded as UTF-8) as a dict.

    Bad input never raises: each problem goes to ``errors`` (default: a
    logged warning) as a :class:`ReadError` naming ``name`` and the line.
    Errors of the stream itself (I/O, decoding of a strict text stream)
    propagate.
    """
    report = errors or _log_error
    head = stream.read(CHUNK)
    if isinstance(head, bytes):  # a binary stream: decode it
        raw = io.BufferedReader(_Prepend(head, stream))  # type: ignore[arg-type]
        stream = io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
        head = stream.read(CHUNK)
    if head.startswith("\ufeff"):  # a byte-order mark
        head = head[1:]
    while head and not head.strip():
        more = stream.read(CHUNK)
        if not more:
            break
        head += more
    kind = _detect(head)
    if kind == "json":
        yield from _JsonReader(stream, head, name, report)
    elif kind == "new":
        yield from _read_new(stream, head, name, report)
    else:
        yield from _read_long(stream, head, name, report)


class _Prepend(io.RawIOBase):
    """A binary stream with some bytes already read put back in front."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n], self.head = self.head[:n], self.head[n:]
            return n
        data = self.rest.read(len(b))
        b[: len(data)] = data
        return len(data)


def read_path(path: Union[str, "os.PathLike[str]"], errors: Optional[ErrorCallback] = None) -> Iterator[dict[str, Any]]:
    """Yield ads from a file (``"-"`` reads standard input); undecodable bytes become U+FFFD."""
    if path == "-":
        yield from read_ads(sys.stdin, "<stdin>", errors)
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        yield from read_ads(f, str(path), errors)
