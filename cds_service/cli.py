"""The `cds-service` command.

  cds-service evaluate [--trial NCT06462092[,NCT...]|all] [--as-of YYYY-MM-DD] [--format json|text] FILE
  cds-service serve [--host 127.0.0.1] [--port 8080] [--workers N] [--threads N]
  cds-service demo-request NAME [--as-of YYYY-MM-DD] [--fhir-server URL]
  cds-service harness --fhir-server URL [--service URL|none] [--mode private|shared]
  cds-service clinical-reading [--output PATH]

Exit status: 0 when the input was evaluated (whatever the eligibility), 2 for
unreadable or non-FHIR input, input with no Patient resource, or bad arguments
(one line on stderr), 1 for an internal error (one line; --debug shows the
traceback).

`evaluate` evaluates each Patient resource of the file with the resources that
reference it; every evaluation carries `patient` (the Patient's id, else its
fullUrl, else `#n`, its place among the file's patients), against each trial
asked for (default: the bundled trials that are enrolling, as the service).
One patient and one trial give one JSON object, more a list. Resources whose
patient is not in the file (a reference to an absent Patient, a `urn:uuid`
that does not resolve in its own Bundle, as in concatenated Bundles) are not
evaluated: stderr says how many were skipped and why, with counts and reasons
only, never a reference (references identify patients).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
from pathlib import Path
from typing import Sequence

import orjson

from .demo import DEMO_PATIENTS, hook_request
from .engine import PatientRecord, Trial, TrialEvaluation, evaluate
from .fhir.bundles import InputError, read_patient_file
from .harness import HarnessError
from .hooks.auth import TrustConfigError, load_trust_config
from .hooks.config import ConfigError
from .report import text_report
from .trials import DefinitionError, enrolling_trials, load_trial, load_trials


class UsageError(Exception):
    """Bad arguments or input: exit 2 with the message."""


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cds-service", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="evaluate the patients in a FHIR file against a trial")
    ev.add_argument("file", metavar="FILE", help="FHIR Bundle (collection, searchset, transaction), a single "
                                                 "resource, or NDJSON; '-' reads standard input")
    ev.add_argument("--trial", help="NCT ids of bundled trials, comma-separated, or 'all' (default: the bundled "
                                    "trials that are recruiting or not yet recruiting)")
    ev.add_argument("--trial-file", type=Path, action="append",
                    help="a trial definition file instead of a bundled trial (may be repeated)")
    ev.add_argument("--as-of", type=_date, help="evaluation date (default: today)")
    ev.add_argument("--format", choices=("json", "text"), default="json")

    sv = sub.add_parser("serve", help="run the CDS Hooks service (gunicorn); configuration from CDS_* variables")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    sv.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")
    sv.add_argument("--insecure-no-auth", action="store_true",
                    help="serve without client authentication on a non-loopback address (never in production)")

    dr = sub.add_parser("demo-request", help="print a patient-view request for a demo patient, with prefetch")
    dr.add_argument("name", choices=sorted(DEMO_PATIENTS))
    dr.add_argument("--as-of", type=_date, help="date the request is for (default: today); the demo record is "
                                                 "shifted so it looks the same on that day")
    dr.add_argument("--fhir-server", help="fhirServer to put in the request")

    hs = sub.add_parser("harness", help="load the gold patients into a FHIR server, call the hook for each "
                                        "without prefetch, compare with the gold expectations")
    hs.add_argument("--fhir-server", required=True, help="FHIR base URL, e.g. http://127.0.0.1:8081/fhir")
    hs.add_argument("--service", default="none",
                    help="base URL of a running service, or 'none' to run one in this process (default)")
    hs.add_argument("--mode", choices=("private", "shared"), default="private",
                    help="private: stable ids (a server of your own); shared: new ids and a unique identifier "
                         "per run, for public servers such as https://hapi.fhir.org/baseR4")
    hs.add_argument("--gold", type=Path, default=Path("tests/gold"),
                    help="gold set: a directory with expectations.yaml and patients/ (default tests/gold), or an "
                         "expectations file X.yaml whose patients are in X/ (e.g. tests/gold/nct01325207.yaml)")
    hs.add_argument("--load-only", action="store_true", help="only load the gold patients (and keep them)")
    hs.add_argument("--keep", action="store_true", help="do not delete the loaded data afterwards")
    hs.add_argument("--only", nargs="*", help="patient ids or file names to run (default: all)")

    cr = sub.add_parser("clinical-reading", help="write docs/clinical-reading.md: every shipped trial's criteria "
                                                 "as the service reads them, from the trial definitions")
    cr.add_argument("--output", type=Path, help="file to write (default: standard output)")
    return parser


def _trials(args: argparse.Namespace) -> list[Trial]:
    if args.trial_file:
        if args.trial is not None:
            raise UsageError("give --trial or --trial-file, not both")
        return [load_trial(path) for path in args.trial_file]
    if args.trial is None:
        enrolling = list(enrolling_trials().values())
        if not enrolling:
            raise UsageError(f"no bundled trial is enrolling; give --trial: one of {', '.join(load_trials())}, or all")
        return enrolling
    trials = load_trials()
    if args.trial.strip() == "all":
        return list(trials.values())
    wanted = [t.strip() for t in args.trial.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in trials]
    if unknown or not wanted:
        raise UsageError(f"unknown trial {', '.join(unknown) or repr(args.trial)}; available: {', '.join(trials)}")
    return [trials[t] for t in dict.fromkeys(wanted)]


def _read(file: str) -> bytes:
    try:
        if file == "-":
            return sys.stdin.buffer.read()
        return Path(file).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror or exc}") from None


def run_evaluate(args: argparse.Namespace) -> int:
    trials = _trials(args)
    grouping = read_patient_file(_read(args.file))
    for line in grouping.skipped_lines():  # counts and reasons only: no reference, no name
        print(f"cds-service: {line}", file=sys.stderr)
    as_of = args.as_of or dt.date.today()
    evaluations: list[tuple[Trial, TrialEvaluation]] = []
    for g in grouping.groups:
        record = PatientRecord(g.resources, g.full_urls)
        for trial in trials:
            evaluation = evaluate(trial, record, as_of)
            if evaluation.patient is None:  # a Patient without id
                evaluation = dataclasses.replace(evaluation, patient=g.label)
            evaluations.append((trial, evaluation))
    if args.format == "text":
        sys.stdout.write("\n".join(text_report(e, trial) for trial, e in evaluations))
    else:
        payload = [e.to_json() for _, e in evaluations]
        document = payload[0] if len(payload) == 1 else payload
        sys.stdout.buffer.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from .hooks.config import Settings
    from .hooks.server import is_loopback, serve

    settings = Settings.from_env()
    load_trials(only=settings.trials or None)  # fail here, once, not in every worker
    if settings.trusted_clients is not None:
        load_trust_config(settings.trusted_clients)
    else:
        if not is_loopback(args.host) and not args.insecure_no_auth:
            raise UsageError(f"refusing to serve on {args.host} without client authentication: set "
                             "CDS_TRUSTED_CLIENTS (and CDS_PUBLIC_BASE_URL), or pass --insecure-no-auth")
        print(f"cds-service: WARNING: no CDS_TRUSTED_CLIENTS: serving WITHOUT client authentication on "
              f"{args.host} ({'loopback only' if is_loopback(args.host) else '--insecure-no-auth'})",
              file=sys.stderr)
    return serve(settings, host=args.host, port=args.port, workers=args.workers, threads=args.threads)


def run_demo_request(args: argparse.Namespace) -> int:
    request = hook_request(args.name, args.as_of or dt.date.today(), fhir_server=args.fhir_server)
    sys.stdout.buffer.write(orjson.dumps(request, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def run_harness(args: argparse.Namespace) -> int:
    from .harness import run

    return run(args.fhir_server, service=args.service, gold_dir=args.gold, mode=args.mode,
               load_only=args.load_only, cleanup=not (args.keep or args.load_only), only=args.only)


def run_clinical_reading(args: argparse.Namespace) -> int:
    from .trials.reading import clinical_reading, load_readings

    document = clinical_reading(load_trials().values(), load_readings())
    if args.output is None:
        sys.stdout.write(document)
    else:
        try:
            args.output.write_text(document, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    return 0


COMMANDS = {"evaluate": run_evaluate, "serve": run_serve, "demo-request": run_demo_request, "harness": run_harness,
            "clinical-reading": run_clinical_reading}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except DefinitionError as exc:  # every problem in the trial file, one per line
        print("\n".join(f"cds-service: {line}" for line in str(exc).splitlines()), file=sys.stderr)
        return 2
    except (UsageError, InputError, ConfigError, TrustConfigError, HarnessError) as exc:
        print(f"cds-service: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # never a traceback for users; --debug for developers
        if args.debug:
            raise
        print(f"cds-service: internal error ({type(exc).__name__}); rerun with --debug for details",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
