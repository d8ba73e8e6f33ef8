"""`opos-monitor explain JOB`: one job's story — attempts, holds, where it ran, the verdict and
its evidence — from the live schedds (queue, then history) or, failing that, the local store.

JOB is a GlobalJobId (``jobsub01.fnal.gov#123.0#1718000000``) or ``cluster.proc``
(with ``--schedd`` to pick the access point when several have that id).
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from typing import Any, Mapping, Sequence

import orjson
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from .config import Config
from .enrich.derive import Enricher
from .records import JobRecord


def parse_job(text: str) -> tuple[str | None, int, int]:
    """(schedd from a GlobalJobId or None, cluster, proc)."""
    text = text.strip()
    parts = text.split("#")
    if len(parts) >= 3 and re.fullmatch(r"\d+\.\d+", parts[1]):
        cluster, proc = parts[1].split(".")
        return parts[0], int(cluster), int(proc)
    m = re.fullmatch(r"(\d+)(?:\.(\d+))?", text)
    if m:
        return None, int(m.group(1)), int(m.group(2) or 0)
    raise ValueError(f"{text!r} is not a GlobalJobId (schedd#cluster.proc#qdate) or cluster.proc")


def _fetch(client: Any, constraint: str, projection: Sequence[str]) -> list[dict[str, Any]]:
    """In a query worker: the job from the queue, else from the history (newest first)."""
    from .sources.htc import ad_dict

    ads = client.query(constraint=constraint, projection=list(projection))
    if not ads:
        ads = list(client.history(constraint, list(projection), match=1))
    return [ad_dict(a) for a in ads]


def live_lookup(cfg: Config, schedd: str | None, cluster: int, proc: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(pool, schedd, ad) for every matching job on the configured pools' schedds."""
    from .sources.htc import JOB_ATTRS, ProcessRunner, QueryError, TokenDir, condor_params
    from .sources.schedd import Discovery

    token = TokenDir(*cfg.htcondor.tokens()) if cfg.htcondor.tokens() else None
    runner = ProcessRunner(condor_params(cfg.htcondor, token.path if token else None), cfg.htcondor.query_timeout_s)
    try:
        disc = Discovery(cfg.pools, runner, timeout_s=cfg.htcondor.query_timeout_s)
        disc.discover()
        found = []
        for known in disc.schedds():
            name = known.target.name
            if schedd and not (name == schedd or name.split("@")[0] == schedd or name.startswith(schedd + ".")):
                continue
            try:
                ads = runner.call(known.target, _fetch, f"ClusterId == {cluster} && ProcId == {proc}", JOB_ATTRS)
            except QueryError as exc:
                print(f"opos-monitor explain: {name}: {exc}", file=sys.stderr)
                continue
            found.extend((known.target.pool, name, ad) for ad in ads)
        return found
    finally:
        runner.close()
        if token:
            token.close()


def _t(v: Any) -> str:
    return v.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(v, dt.datetime) else "-"


def story(rec: JobRecord, derived: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The lines a shifter reads, in order."""
    a = rec.attrs
    lines = [
        ("job", f"{rec.global_job_id}  (owner {rec.owner or '-'}, {rec.accounting_group or 'no accounting group'})"),
        ("status", f"{rec.status}; queued {_t(rec.q_date)}, started {_t(rec.job_start_date)}, "
                   f"ended {_t(rec.completion_date or (rec.entered_current_status if rec.status in ('held', 'removed') else None))}"),
        ("attempts", f"{rec.job_run_count or 0} run(s), {rec.num_shadow_starts or 0} shadow start(s), "
                     f"{rec.num_holds or 0} hold(s), {rec.num_shadow_exceptions or 0} shadow exception(s)"),
        ("where", f"site {derived.get('site', 'unknown')}; host {rec.last_remote_host or rec.remote_host or '-'}"),
        ("memory", f"used {rec.memory_usage_mb if rec.memory_usage_mb is not None else '-'} MB "
                   f"of {rec.request_memory_mb if rec.request_memory_mb is not None else '-'} MB requested"),
    ]
    if rec.exit_code is not None or rec.exit_by_signal:
        lines.append(("exit", f"signal {rec.exit_signal}" if rec.exit_by_signal else f"exit code {rec.exit_code}"))
    for label, text, code, sub in (("hold", rec.hold_reason, rec.hold_reason_code, rec.hold_reason_subcode),
                                   ("last hold", rec.last_hold_reason, rec.last_hold_reason_code,
                                    rec.last_hold_reason_subcode)):
        if text:
            lines.append((label, f"[{code}/{sub}] {text}"))
    if rec.remove_reason:
        lines.append(("removed", rec.remove_reason))
    if rec.x509_user_proxy_expiration is not None:
        lines.append(("proxy", f"{a.get('x509userproxysubject') or a.get('X509UserProxySubject') or '-'} "
                               f"expires {_t(rec.x509_user_proxy_expiration)}"))
    return lines


def render(console: Console, pool: str, schedd: str, origin: str, rec: JobRecord, derived: Mapping[str, Any]) -> None:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    for k, v in story(rec, derived):
        t.add_row(k, v)
    console.print(Panel(t, title=f"{pool} / {schedd}  ({origin})", title_align="left"))
    verdict = Table.grid(padding=(0, 2))
    verdict.add_column(style="bold", no_wrap=True)
    verdict.add_column(overflow="fold")
    verdict.add_row("category", f"[bold]{derived['category']}[/bold] (rule {derived['rule']}, "
                                f"confidence {derived['confidence']:.2f})")
    verdict.add_row("why", derived["explanation"])
    verdict.add_row("do", derived.get("action") or "-")
    if derived.get("runbook"):
        verdict.add_row("runbook", derived["runbook"])
    if derived.get("signature"):
        verdict.add_row("signature", f"{derived['signature_hash']}  {derived['signature']}")
    if derived.get("removed_by_user"):
        verdict.add_row("note", "the owner removed the job after the failure above")
    for k, v in (derived.get("evidence") or {}).items():
        verdict.add_row("evidence", f"{k} = {v}")
    console.print(Panel(verdict, title="verdict", title_align="left"))


def run(cfg: Config, job: str, *, schedd: str | None, live: bool, as_json: bool) -> int:
    gschedd, cluster, proc = parse_job(job)
    schedd = schedd or gschedd
    enricher = Enricher.create(cfg.classifier.rulesets, cfg.sites.corrections)
    found: list[tuple[str, str, str, dict[str, Any]]] = []
    if live:
        found = [(p, s, "live", ad) for p, s, ad in live_lookup(cfg, schedd, cluster, proc)]
    if not found:
        found = _from_store(cfg, job if gschedd else f"{cluster}.{proc}", schedd)
    if not found:
        print(f"opos-monitor explain: job {job} not found (live schedds{' and' if live else ':'} local store)",
              file=sys.stderr)
        return 1
    console = Console()
    for pool, sname, origin, ad in found:
        rec = JobRecord.from_ad(ad, pool=pool, schedd=sname, source=origin)
        derived = enricher.derive(ad)
        if as_json:
            sys.stdout.buffer.write(orjson.dumps({"pool": pool, "schedd": sname, "origin": origin, "job": rec.global_job_id,
                                                  "story": dict(story(rec, derived)), "verdict": derived},
                                                 default=str) + b"\n")
        else:
            render(console, pool, sname, origin, rec, derived)
    return 0


def _from_store(cfg: Config, key: str, schedd: str | None) -> list[tuple[str, str, str, dict[str, Any]]]:
    from .sinks.store import Store

    if not cfg.store_path.exists():
        return []
    store = Store.open_readonly(cfg.store_path)
    try:
        docs = [d for d in store.job(key, schedd) if d.kind == "job"]
    finally:
        store.close()
    out = []
    for d in docs:
        ad = {k: v for k, v in d.doc.items() if k != "opos"}
        out.append((d.pool, d.schedd, "local store", ad))
    return out
