"""The ``opos-monitor`` command line.

Each sub-command is a small function taking the parsed arguments and returning an exit code.
Errors the operator can fix (bad config, unreadable file) print one clear message and exit
non-zero; they never end in a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import __version__
from .config import Config, ConfigError, load_config, redacted_dict

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.file or args.config)
    if args.show:
        import orjson

        sys.stdout.write(orjson.dumps(redacted_dict(cfg), option=orjson.OPT_INDENT_2).decode() + "\n")
    pools = ", ".join(f"{name} ({', '.join(p.collectors)})" for name, p in cfg.pools.items())
    print(f"configuration OK: pools {pools}; store {cfg.store_path}; metrics on {cfg.metrics.listen}", file=sys.stderr)
    return EXIT_OK


def cmd_classify(args: argparse.Namespace) -> int:
    from . import commands_classify

    cfg = _load(args)
    rulesets = args.ruleset or cfg.classifier.rulesets
    return commands_classify.run(args.file, rulesets, cfg.sites.corrections)


def cmd_failures(args: argparse.Namespace) -> int:
    from . import commands_failures
    from .sinks.store import StoreError

    cfg = _load(args)
    try:
        return commands_failures.run(
            cfg.store_path, since=args.since, site=args.site, category=args.category, schedd=args.schedd,
            owner=args.owner, signature=args.signature, limit=args.limit, as_json=args.json,
            max_bytes=cfg.store.max_bytes,
        )
    except (StoreError, ValueError) as exc:
        print(f"opos-monitor failures: {exc}", file=sys.stderr)
        return EXIT_USAGE


def cmd_once(args: argparse.Namespace) -> int:
    from . import commands_once
    from .sinks.store import StoreError

    cfg = _load(args)
    _logging(args, cfg)
    try:
        return commands_once.run(cfg, as_json=args.json)
    except (StoreError, OSError) as exc:  # store path, token file, ...
        print(f"opos-monitor once: {exc}", file=sys.stderr)
        return EXIT_FAILED


def cmd_run(args: argparse.Namespace) -> int:
    from . import daemon
    from .sinks.store import StoreError

    cfg = _load(args)
    _logging(args, cfg)
    try:
        return daemon.main(cfg, args.config)
    except StoreError as exc:
        print(f"opos-monitor run: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # e.g. the metrics address is in use
        print(f"opos-monitor run: {exc}", file=sys.stderr)
        return EXIT_FAILED


def cmd_explain(args: argparse.Namespace) -> int:
    from . import commands_explain
    from .sinks.store import StoreError

    cfg = _load(args)
    try:
        return commands_explain.run(cfg, args.job, schedd=args.schedd, live=not args.store_only, as_json=args.json)
    except (StoreError, ValueError) as exc:
        print(f"opos-monitor explain: {exc}", file=sys.stderr)
        return EXIT_USAGE


def cmd_es_setup(args: argparse.Namespace) -> int:
    from .sinks.elastic import es_setup_main

    cfg = _load(args)
    return es_setup_main(cfg, retention_days=args.retention_days)


def cmd_replay(args: argparse.Namespace) -> int:
    """Put dead letters, or every record of a time range, back in the outbox for shipping."""
    from .commands_failures import parse_since
    from .sinks.store import Store, StoreError

    cfg = _load(args)
    if not cfg.elasticsearch.enabled:
        print("opos-monitor replay: elasticsearch.enabled is false: nothing would ship the records", file=sys.stderr)
        return EXIT_USAGE
    try:
        since, until = parse_since(args.since), parse_since(args.until)
        with Store.open(cfg.store_path, max_bytes=cfg.store.max_bytes, outbox_enabled=True) as store:
            if args.dead_letters:
                n = store.requeue_dead(args.doc_id or None)
                what = "dead letters"
            else:
                n = store.requeue_range(since, until)
                what = "records"
    except (StoreError, ValueError) as exc:
        print(f"opos-monitor replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"opos-monitor replay: {n} {what} queued for shipping; the running daemon (or `once`) ships them",
          file=sys.stderr)
    return EXIT_OK


def _logging(args: argparse.Namespace, cfg: Config) -> None:
    from .logsetup import configure_logging

    configure_logging(args.log_level or cfg.logging.level, args.log_format or cfg.logging.format)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opos-monitor",
        description="Watch HTCondor jobs across pools: which fail, where and why.",
    )
    parser.add_argument("--version", action="version", version=f"opos-monitor {__version__}")
    parser.add_argument(
        "-c", "--config", metavar="FILE",
        help="TOML configuration file (default: $OPOS_MONITOR_CONFIG, else built-in defaults)",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override logging.level")
    parser.add_argument("--log-format", choices=["auto", "json", "console"], help="override logging.format")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("check-config", help="validate the configuration and exit")
    p.add_argument("file", nargs="?", metavar="FILE", help="configuration file to check (default: --config)")
    p.add_argument("--show", action="store_true", help="print the effective configuration (secrets masked)")
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser(
        "classify", help="classify job ads from a file or stdin; one JSON object per ad",
        description="Read job ads (condor_q/condor_history -long, raw history files, -json arrays or "
                    "JSON lines) and print one JSON object per ad, in input order: job, category, rule, "
                    "signature, explanation, site and the evidence.",
    )
    p.add_argument("file", nargs="?", default="-", metavar="FILE", help="input file, or - for stdin (default)")
    p.add_argument("--ruleset", action="append", metavar="NAME",
                   help="rule sets to use (default, fife, cms or a TOML path); repeatable (default: config)")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("failures", help="list failed jobs from the local store: top signatures, then jobs")
    p.add_argument("--since", default="24h", help="a duration (24h, 30m, 7d) or an ISO time (default 24h)")
    p.add_argument("--site", help="only this site (GLIDEIN_Site or corrected domain)")
    p.add_argument("--category", choices=["site", "memory", "certificate", "code", "transfer", "policy", "user", "unknown"])
    p.add_argument("--schedd", help="only this schedd (its Name)")
    p.add_argument("--owner", help="only this job owner")
    p.add_argument("--signature", help="only this signature hash")
    p.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per failed job")
    p.set_defaults(func=cmd_failures)

    p = sub.add_parser("explain", help="one job's story: attempts, holds, where it ran, verdict and evidence")
    p.add_argument("job", metavar="JOB", help="GlobalJobId or cluster.proc")
    p.add_argument("--schedd", help="the schedd (Name, or its short name) when cluster.proc is ambiguous")
    p.add_argument("--store-only", action="store_true", help="do not ask the schedds; read the local store")
    p.add_argument("--json", action="store_true", help="print the story and verdict as JSON")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("es-setup", help="install the Elasticsearch/OpenSearch index template and retention policy")
    p.add_argument("--retention-days", type=int, help="delete indices older than this (default: elasticsearch.retention_days, 400)")
    p.set_defaults(func=cmd_es_setup)

    p = sub.add_parser("replay", help="re-send dead letters or a time range of stored records to Elasticsearch")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--dead-letters", action="store_true", help="re-send the dead letters (all, or --doc-id)")
    g.add_argument("--since", help="re-send records that ended since (24h, 7d or an ISO time)")
    p.add_argument("--until", help="with --since: up to this time")
    p.add_argument("--doc-id", action="append", help="with --dead-letters: only these document ids")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("once", help="poll every configured source once and print a summary per schedd")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_once)

    p = sub.add_parser("run", help="run the daemon: poll on schedule, serve /metrics, ship records")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"opos-monitor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `opos-monitor classify big.txt | head`
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
