"""The enrich chain for one job: site attribution + classification (+ its signature).

``derive`` is what every source's records go through before the sinks; its result is the
``opos`` object of a job document (see docs/record-schema.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .classify import RuleSet, classify, default_ruleset, load_ruleset
from .site import Corrections, attribute_site, compile_corrections


@dataclass(frozen=True, slots=True)
class Enricher:
    """Holds the compiled inputs (rules, site corrections) so each call stays cheap."""

    ruleset: RuleSet
    corrections: Corrections

    @classmethod
    def create(cls, rulesets: Sequence[str] = ("default",), corrections: Mapping[str, str] | None = None) -> "Enricher":
        extra = [r for r in rulesets if r != "default"]
        rs = load_ruleset(*extra) if extra else default_ruleset()
        return cls(rs, compile_corrections(corrections or None))  # None keeps the built-in table

    def derive(self, ad: Mapping[str, Any], events: Sequence[Mapping[str, Any]] | None = None,
               now: float | None = None) -> dict[str, Any]:
        verdict = classify(ad, events, now=now, ruleset=self.ruleset)
        out = verdict.to_dict()
        out["site"] = attribute_site(ad, self.corrections)
        return out
