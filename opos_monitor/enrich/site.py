"""Site attribution: where did (or would) a job run?

Order of evidence, first usable value wins:

1. ``MATCH_EXP_JOB_GLIDEIN_Site`` - the glidein site the job was matched to
   (set by the ``$$(GLIDEIN_Site)`` expansion in GlideinWMS submit files);
2. ``GLIDEIN_Site`` / ``JOB_GLIDEIN_Site`` on the job ad;
3. ``MATCH_EXP_JOBGLIDEIN_ResourceName`` / ``MATCH_EXP_JOB_GLIDEIN_ResourceName``
   (the CE resource name);
4. ``MachineAttrGLIDEIN_Site0`` (``job_machine_attrs = GLIDEIN_Site``);
5. the execute host's domain from ``RemoteHost`` / ``LastRemoteHost`` /
   ``StartdName`` / ``LastRemoteWallClockHost``...  mapped through a corrections
   table (domain suffix or regex -> site name, e.g. ``fnal.gov`` -> ``FermiGrid``);
   without a correction the bare domain is returned;
6. ``"unknown"``.

Values that are unexpanded or placeholders (``$$(GLIDEIN_Site:Unknown)``,
``Unknown``, ``UNDEFINED``, empty) are ignored.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Pattern

__all__ = [
    "attribute_site",
    "host_of",
    "domain_of",
    "casefold_view",
    "Corrections",
    "compile_corrections",
    "DEFAULT_CORRECTIONS",
]

UNKNOWN = "unknown"

_SITE_ATTRS = (
    "MATCH_EXP_JOB_GLIDEIN_Site",
    "GLIDEIN_Site",
    "JOB_GLIDEIN_Site",
    "MATCH_EXP_JOBGLIDEIN_ResourceName",
    "MATCH_EXP_JOB_GLIDEIN_ResourceName",
    "MachineAttrGLIDEIN_Site0",
)
_HOST_ATTRS = ("RemoteHost", "LastRemoteHost", "StartdName", "LastRemoteWallClockHost", "MachineAttrMachine0")

_PLACEHOLDERS = frozenset({"", "unknown", "undefined", "none", "null", "error", "local"})

#: Corrections shipped as a sensible default for Fermilab; config may replace it.
DEFAULT_CORRECTIONS: Mapping[str, str] = {"fnal.gov": "FermiGrid"}

_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")


class Corrections:
    """Compiled corrections: domain-suffix entries and regex entries.

    Keys that look like a plain domain (letters, digits, dots, dashes) match
    the domain itself or any sub-domain; any other key is a regular expression
    searched (case-insensitively) in the full host name.  Regexes are tried
    first, in the given order (they are the specific exceptions), then the
    suffixes, longest first.
    """

    __slots__ = ("_suffixes", "_regexes", "_cache")

    def __init__(self, table: Mapping[str, str] | Iterable[tuple[str, str]] | None = None) -> None:
        items = list(table.items()) if isinstance(table, Mapping) else list(table or ())
        suffixes: list[tuple[str, str]] = []
        regexes: list[tuple[Pattern[str], str]] = []
        for key, site in items:
            if re.fullmatch(r"[A-Za-z0-9.-]+", key):
                suffixes.append((key.lower().strip("."), site))
            else:
                regexes.append((re.compile(key, re.IGNORECASE), site))
        suffixes.sort(key=lambda kv: -len(kv[0]))
        self._suffixes = tuple(suffixes)
        self._regexes = tuple(regexes)
        self._cache: dict[str, str | None] = {}

    def site_for(self, host: str) -> str | None:
        host = host.lower()
        hit = self._cache.get(host, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        found: str | None = None
        for rx, site in self._regexes:
            if rx.search(host):
                found = site
                break
        if found is None:
            for suffix, site in self._suffixes:
                if host == suffix or host.endswith("." + suffix):
                    found = site
                    break
        if len(self._cache) < 65536:
            self._cache[host] = found
        return found


def compile_corrections(table: Mapping[str, str] | Iterable[tuple[str, str]] | Corrections | None) -> Corrections:
    if isinstance(table, Corrections):
        return table
    return Corrections(DEFAULT_CORRECTIONS if table is None else table)


_DEFAULT = Corrections(DEFAULT_CORRECTIONS)


def _clean(value: Any) -> str | None:
    if value is None or isinstance(value, (bool, int, float)):
        return None
    text = str(value).strip().strip('"').strip()
    if not text or "$$(" in text or text.startswith("$(") or text.lower() in _PLACEHOLDERS:
        return None
    return text


def host_of(value: Any) -> str | None:
    """Execute host from ``slot1_2@fnpc123.fnal.gov`` / ``glidein_1_2@host`` / ``host``."""
    text = _clean(value)
    if text is None:
        return None
    if "@" in text:
        text = text.rsplit("@", 1)[1]
    if text.startswith("<"):  # a sinful string: no host name in it
        return None
    text = text.split(":", 1)[0].strip().rstrip(".")
    return text.lower() or None


def domain_of(host: str) -> str | None:
    """``fnpc123.fnal.gov`` -> ``fnal.gov``; None for bare names and IPs."""
    if not host or _IPV4.match(host) or "." not in host:
        return None
    return host.split(".", 1)[1]


_CANONICAL_PROBES = ("JobStatus", "ClusterId", "ProcId", "GlobalJobId", "MyType", "Owner", "QDate")


class _LowerView:
    """Case-insensitive read view of a mapping (built once per ad)."""

    __slots__ = ("_d",)

    def __init__(self, ad: Mapping[str, Any]) -> None:
        self._d = {str(k).lower(): v for k, v in ad.items()}

    def get(self, name: str, default: Any = None) -> Any:
        return self._d.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._d


def casefold_view(ad: Mapping[str, Any]) -> Any:
    """Something with ``.get(CanonicalName)`` that honours HTCondor's
    case-insensitive attribute names.

    Ads written with canonical names (every HTCondor tool, ``-json`` output,
    the python bindings) are returned as they are - a plain ``get`` is the
    fast path.  Only when none of a few always-present attributes is found
    under its canonical spelling is a lower-cased copy built, once.
    ``classad2.ClassAd`` objects are case-insensitive already.
    """
    if not isinstance(ad, dict):
        return ad
    for probe in _CANONICAL_PROBES:
        if probe in ad:
            return ad
    return _LowerView(ad)


def attribute_site(ad: Mapping[str, Any], corrections: Mapping[str, str] | Corrections | None = None) -> str:
    """Site the job ran at (or was matched to); ``"unknown"`` if nothing says."""
    view = casefold_view(ad)
    for name in _SITE_ATTRS:
        site = _clean(view.get(name))
        if site is not None:
            return site
    table = _DEFAULT if corrections is None else compile_corrections(corrections)
    for name in _HOST_ATTRS:
        host = host_of(view.get(name))
        if host is None:
            continue
        site = table.site_for(host)
        if site is not None:
            return site
        domain = domain_of(host)
        if domain is not None:
            return domain
    return UNKNOWN
