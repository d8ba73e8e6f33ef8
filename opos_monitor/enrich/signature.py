"""Failure signatures: reason text -> stable template + short hash.

HTCondor reason strings embed everything that differs between otherwise
identical failures: slot and host names (``slot1_26@fnpc19131.fnal.gov``),
sinful strings (``<131.225.1.2:9618?addrs=...>``), sandbox paths
(``/var/lib/condor/execute/dir_16393/...``), job ids, errno values, sizes and
times.  :func:`make_signature` replaces those with placeholders so thousands of
messages collapse into a handful of templates, and hashes the template.

Placeholders, in the order they are applied (all regexes are precompiled; the
rare constructs - URLs, argument lists, Windows paths, sinful strings, slots,
IPv6 - run only when a substring test says they may be present, the rest is a
single combined regex whose matches can only start at a delimiter or a digit):

==============  ============================================================
``<ARGS>``      the argument list in "Failed to execute 'x' with arguments ...:"
``<USER>``      the name in condor_rm/condor_hold's "(by user name)"
``<ADDR>``      sinful strings ``<1.2.3.4:9618?...>`` / ``<[::1]:9618>``
``scheme://<URL>``  URLs (the scheme is kept: ``osdf://<URL>``)
``<UUID>``      UUIDs
``<SLOT>``      ``name@host`` (slot1_2@host, glidein_1_2@host, user@domain)
``<PATH>``      absolute paths.  Directories are dropped; the basename is
                dropped too but its extension is kept (``<PATH>.root``) and
                CVMFS paths keep their repository (``/cvmfs/repo<PATH>``),
                because those two survive variation and still tell a shifter
                something.  ``C:\\...`` paths too.
``<DATE>``      dates, ISO timestamps, ``8/1 14:56``
``<TIME>``      clock times / durations ``20:00:00``
``<IP>``        IPv4 (with optional port) and IPv6 addresses
``<HOST>``      host names with two or more dots, or one dot and a common TLD
``<JOBID>``     ``job 123.0`` and ``123.000.000``
``<HEX>``       ``0x..`` and runs of 8+ hex digits containing a digit
``<N>``         any remaining number (integer or decimal), also inside words
==============  ============================================================

Whitespace runs collapse to one space.  Masking is idempotent
(``mask(mask(t)) == mask(t)``), which the property tests check.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys

__all__ = ["mask", "make_signature", "signature_hash", "HASH_CHARS"]

HASH_CHARS = 12

_TLDS = (
    "gov|edu|org|com|net|int|mil|uk|de|fr|it|ch|nl|es|pl|cz|br|in|jp|kr|cn|ca|"
    "au|ru|be|at|se|no|fi|dk|pt|gr|hu|il|tw|mx|ar|cl|za|ie|io|local|lan|internal"
)

# Rare constructs get their own pass, run only when a cheap substring test says
# the construct may be present; everything else is one combined regex.  Passes
# run in order and placeholders never contain digits, slashes, '@' or '://', so
# a later pass cannot re-match an earlier placeholder.
_URL_RE = re.compile(r"(?<![\w>])([A-Za-z][A-Za-z0-9+.-]{1,15})://(?:<URL>|[^\s)\]|;,'\"<>])*")
_ARGS_RE = re.compile(r"(?<=with arguments ).+?(?=: )")
_BY_USER_RE = re.compile(r"\(by user [^()]*\)")
_WINPATH_RE = re.compile(r"(?<![\w>])[A-Za-z]:\\[^\s:;,'\"()<>|]+")
_SINFUL_RE = re.compile(r"<\[?[0-9][^<>\s]*>")
_SLOT_LEFT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.+-")
_SLOT_RIGHT_RE = re.compile(r"[\w.@-]*[\w-]")
_IPV6_RE = re.compile(
    r"\[?(?<![\w:.])(?=[0-9A-Fa-f:]*[0-9])"
    r"(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}"
    r"|(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6})?::(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6})?)"
    r"(?:\]:[0-9]{1,5}|\])?(?![\w:])"
)

# The core regex.  Tokens that must start at the beginning of a word are matched
# together with the one delimiter character in front of them (the callback puts
# it back), and the only other branch starts with a digit.  So the first
# character of any match is a non-letter, which lets the regex engine skip over
# letters without trying a match there - most of a reason text is letters.
# Inside the word-start group every alternative begins with a plain character
# class, so the engine rejects it with one test.  ``mask`` prepends a space so
# a token can start the text.
_P = r"[^\s/:;,'\"()<>|\[\]{}=]"  # path component character
# Possessive quantifiers (Python >= 3.11) stop pointless backtracking where the
# repeated class cannot contain the character that follows; on 3.10 the plain
# greedy form is used - same matches, a little slower.
_PP = "++" if sys.version_info >= (3, 11) else "+"
_PS = "*+" if sys.version_info >= (3, 11) else "*"
_CORE = (
    r"[^A-Za-z_.-](?:(?<=[^\w.>-])(?:"
    + "|".join(
        (
            rf"/(?P<path>{_P}{_PP}(?:/{_P}{_PP})*/?)",
            r"[0-9](?:(?P<date>[0-9]{3}-[0-9]{2}-[0-9]{2}"
            r"(?:[T ][0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?"
            r"|[0-9]?/[0-9]{1,2}(?:/[0-9]{2,4})?(?: [0-9]{1,2}:[0-9]{2}(?::[0-9]{2})?)?(?![\w<]))"
            r"|(?P<time>[0-9]?:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?)(?![\w<])"
            r"|(?P<ipv4>[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?::[0-9]{1,5})?)(?![\w<])"
            r"|(?P<jobid>[0-9]*\.[0-9]{3}\.[0-9]{3})(?![\w<]))",
            r"0(?P<hex0x>[xX][0-9A-Fa-f]+)(?![\w<])",
            r"[0-9A-Fa-f](?:(?P<uuid>[0-9A-Fa-f]{7}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})(?![\w<-])"
            rf"|(?P<hexrun>[0-9A-Fa-f]{{7,}}{'+' if _PP == '++' else ''})(?![\w<]))",
            r"[Jj](?P<jobkw>ob [0-9]+\.[0-9]+)(?![\w.<])",
            rf"[A-Za-z0-9](?P<host>[A-Za-z0-9-]{_PS}(?:\.[A-Za-z0-9-]{_PP})+)(?![\w<-])",
        )
    )
    + r")|(?<=[0-9])(?P<num>[0-9]*(?:\.[0-9]+)?))"
)
_CORE_RE = re.compile(_CORE)
_NUM_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_TLD_SET = frozenset(_TLDS.split("|"))

_CONST = {
    "date": "<DATE>",
    "time": "<TIME>",
    "ipv4": "<IP>",
    "jobid": "<JOBID>",
    "uuid": "<UUID>",
    "hex0x": "<HEX>",
}

_EXT_RE = re.compile(r"\.([A-Za-z]{1,6})$")
_CVMFS_RE = re.compile(r"/cvmfs/([A-Za-z0-9._-]+)")


def _path_token(path: str) -> str:
    m = _CVMFS_RE.match(path)
    prefix = ""
    if m:
        prefix = "/cvmfs/" + m.group(1)
        if len(path) == m.end() or path[m.end():] == "/":
            return prefix
    ext = _EXT_RE.search(path)
    suffix = "." + ext.group(1) if ext and not path.endswith("/") else ""
    return f"{prefix}<PATH>{suffix}"


def _valid_host(labels: list[str]) -> bool:
    last = labels[-1]
    if len(labels) >= 3:
        return not last.isdigit() and any(c.isalpha() for c in last)
    return len(labels) == 2 and last.lower() in _TLD_SET


def _host_token(word: str) -> str:
    """``<HOST>`` for a host name; for a dotted word that is not one as a
    whole, its longest leading part that is (the rest number-masked) -
    exactly what masking the result again would find, so masking stays
    idempotent."""
    labels = word.split(".")
    for n in range(len(labels), 1, -1):
        if _valid_host(labels[:n]):
            if n == len(labels):
                return "<HOST>"
            return "<HOST>." + _NUM_RE.sub("<N>", ".".join(labels[n:]))
    return _NUM_RE.sub("<N>", word)


def _core_replace(m: re.Match[str]) -> str:
    kind = m.lastgroup
    if kind == "num":
        return "<N>"
    whole = m.group()
    d = whole[0]  # the delimiter in front of the token
    const = _CONST.get(kind)  # type: ignore[arg-type]
    if const is not None:
        return d + const
    token = whole[1:]
    if kind == "host":
        return d + _host_token(token)
    if kind == "path":
        return d + _path_token(token)
    if kind == "hexrun":
        if token.isdigit():
            return d + "<N>"
        if any(c.isdigit() for c in token):
            return d + "<HEX>"
        return whole
    # jobkw: "job 123.0" keeps the word
    return d + token[:3] + " <JOBID>"


def _mask_slots(text: str) -> str:
    """``name@host`` -> ``<SLOT>`` (slot1_2@host, glidein_1_2@host, user@domain)."""
    out = []
    pos = 0
    at = text.find("@")
    left_chars = _SLOT_LEFT
    while at != -1:
        start = at
        while start > pos and text[start - 1] in left_chars:
            start -= 1
        right = _SLOT_RIGHT_RE.match(text, at + 1)
        if start < at and right is not None:
            out.append(text[pos:start])
            out.append("<SLOT>")
            pos = right.end()
            at = text.find("@", pos)
        else:
            at = text.find("@", at + 1)
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _url_replace(m: re.Match[str]) -> str:
    return m.group(1) + "://<URL>"


def mask(text: str) -> str:
    """The template of ``text``: variable parts replaced by placeholders."""
    text = " ".join(text.split())
    if not text:
        return ""
    if "://" in text:
        text = _URL_RE.sub(_url_replace, text)
    if "with arguments " in text:
        text = _ARGS_RE.sub("<ARGS>", text, count=1)
    if "(by user " in text:
        text = _BY_USER_RE.sub("(by user <USER>)", text)
    if ":\\" in text:
        text = _WINPATH_RE.sub("<PATH>", text)
    if "<" in text:
        text = _SINFUL_RE.sub("<ADDR>", text)
    if "@" in text:
        text = _mask_slots(text)
    if "::" in text or text.count(":") >= 7:
        text = _IPV6_RE.sub("<IP>", text)
    # the leading space lets a token start the text; the callback always puts
    # the delimiter back, so it is still there to strip
    return _CORE_RE.sub(_core_replace, " " + text)[1:]


def signature_hash(template: str) -> str:
    """Short stable hash (12 hex chars of BLAKE2b) of a template."""
    return hashlib.blake2b(template.encode("utf-8", "surrogatepass"), digest_size=HASH_CHARS // 2).hexdigest()


@functools.lru_cache(maxsize=32768)
def make_signature(text: str) -> tuple[str, str]:
    """``(template, hash)`` for a reason text."""
    template = mask(text)
    return template, signature_hash(template)
