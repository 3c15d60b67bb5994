"""``medgemma-client`` (or ``python -m client`` in the checkout): summarise one document, or a whole directory of them.

Answers go to stdout; progress, warnings and errors go to stderr, so the
output can be piped. Expected failures end as one ``error:`` line and an exit
code from the table below.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .batch import BatchOptions, BatchRun
from .constants import BATCH_CONCURRENCY, MAX_ERROR_LINE_CHARS, WAIT_TIMEOUT_S
from .errors import AuthenticationError, ConfigurationError, InvalidRequestError, MedGemmaClientError, one_line
from .inputs import InputOptions
from .jobs import Job
from .medgemma_client import MedGemmaClient
from .results import JobResult
from .transport import OnUncertain

EXIT_OK = 0
EXIT_FAILURE = 1  # the job failed, the API could not be reached, or some batch documents failed
EXIT_USAGE = 2  # bad arguments, unreadable input, missing or rejected credentials
EXIT_INTERRUPTED = 130  # Ctrl-C; the remote job was cancelled where possible


def main(argv: list[str] | None = None, *, prog: str = "medgemma-client") -> int:
    """The ``medgemma-client`` console script; ``python -m client`` passes its own ``prog``."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    _check_combinations(parser, args)
    _configure_logging(args.verbose)
    try:
        if args.batch:
            return _run_batch(args)
        with _make_client(args) as client:
            if args.health:
                print(json.dumps(client.health(), indent=2))
                return EXIT_OK
            return _run_one(args, client)
    except (ConfigurationError, InvalidRequestError, AuthenticationError) as exc:
        _error(exc)
        return EXIT_USAGE
    except MedGemmaClientError as exc:
        _error(exc)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser(prog: str = "medgemma-client") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Summarise clinical notes with the MedGemma RunPod worker.",
        epilog="Settings: RUNPOD_API_KEY, RUNPOD_ENDPOINT_ID, RUNPOD_BASE_URL (environment or .env). "
        f"Exit codes: {EXIT_OK} ok, {EXIT_FAILURE} job or batch failure, "
        f"{EXIT_USAGE} usage or configuration error, {EXIT_INTERRUPTED} interrupted.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the note text")
    source.add_argument("--file", type=Path, help="read the note from this UTF-8 file")
    source.add_argument("--batch", type=Path, metavar="DIR", help="summarise every DIR/**/*.md")
    source.add_argument("--health", action="store_true", help="print the endpoint's health")

    job = parser.add_argument_group("job options")
    job.add_argument(
        "--image", type=Path, action="append", default=[], metavar="PATH", help="attach an image file (repeatable)"
    )
    job.add_argument("--mode", choices=("summarize", "general"), help="worker mode (worker default: summarize)")
    job.add_argument("--system-prompt", metavar="TEXT", help="replace the worker's system prompt")
    job.add_argument("--max-tokens", type=_positive_int, metavar="N", help="maximum new tokens")
    job.add_argument("--temperature", type=float, metavar="T", help="sampling temperature")
    job.add_argument(
        "--async", dest="use_async", action="store_true", help="submit with /run and poll /status instead of /runsync"
    )
    job.add_argument(
        "--stream", action="store_true", help="print the answer as it is generated (uses /run and /stream)"
    )
    job.add_argument("--json", action="store_true", help="print the whole normalised result as JSON")
    job.add_argument(
        "--timeout",
        type=float,
        default=WAIT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"give up (and cancel) a job after this long (default {WAIT_TIMEOUT_S:g})",
    )

    batch = parser.add_argument_group("batch options")
    batch.add_argument(
        "--out", type=Path, default=Path("summaries"), metavar="DIR", help="where summaries go (default: summaries)"
    )
    batch.add_argument(
        "--concurrency",
        type=_positive_int,
        default=BATCH_CONCURRENCY,
        metavar="N",
        help=f"documents in flight at once (default {BATCH_CONCURRENCY})",
    )
    batch.add_argument("--overwrite", action="store_true", help="redo documents whose summary already exists")

    connection = parser.add_argument_group("connection (override environment / .env)")
    connection.add_argument("--endpoint-id", metavar="ID", help="RunPod endpoint id")
    connection.add_argument("--base-url", metavar="URL", help="API base URL, or a local worker's URL")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log requests, retries and timings (never content) to stderr"
    )
    return parser


def _check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.batch:
        for flag, used in (("--image", args.image), ("--stream", args.stream), ("--json", args.json)):
            if used:
                parser.error(f"{flag} cannot be used with --batch")
        if not args.batch.is_dir():
            parser.error(f"--batch {args.batch}: not a directory")
        if args.out.resolve() == args.batch.resolve():
            parser.error("--out must differ from --batch (summaries would replace the notes)")
    if args.stream and args.use_async:
        parser.error("--stream already submits asynchronously; drop --async")


def _run_one(args: argparse.Namespace, client: MedGemmaClient) -> int:
    text, label = _read_input(args)
    options = _input_options(args)
    if args.image:
        options["images"] = args.image
    job: Job | None = None
    try:
        if args.stream:
            options["stream"] = True
            job = client.run(text, label=label, **options)
            print(f"job {job.id} submitted", file=sys.stderr)
            for piece in job.stream(cancel_on_timeout=True):
                if not args.json:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            assert job.result is not None
            result: JobResult = job.result
            if not args.json:
                sys.stdout.write("\n")
        else:
            job = client.run(text, sync=not args.use_async, label=label, **options)
            if args.use_async:
                print(f"job {job.id} submitted", file=sys.stderr)
            result = job.wait(cancel_on_timeout=True)
    except KeyboardInterrupt:
        _cancel_after_interrupt(job)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    elif not args.stream:
        print(result.text)
    logging.getLogger(__name__).info(
        "job %s done: %s prompt + %s completion tokens",
        result.job_id,
        result.prompt_tokens,
        result.completion_tokens,
    )
    return EXIT_OK


def _run_batch(args: argparse.Namespace) -> int:
    options = BatchOptions(
        concurrency=args.concurrency,
        overwrite=args.overwrite,
        use_async=args.use_async,
        input_options=_input_options(args),
    )
    batch = BatchRun(args.batch, args.out, options)
    with _make_client(args, on_uncertain_submission=batch.note_possible_duplicate) as client:
        report = batch.run(client)
    if report.interrupted:
        return EXIT_INTERRUPTED
    if report.aborted:
        return EXIT_USAGE
    return EXIT_FAILURE if report.failed or report.not_finished else EXIT_OK


def _make_client(args: argparse.Namespace, *, on_uncertain_submission: OnUncertain | None = None) -> MedGemmaClient:
    return MedGemmaClient(
        endpoint_id=args.endpoint_id,
        base_url=args.base_url,
        wait_timeout=args.timeout,
        on_uncertain_submission=on_uncertain_submission,
    )


def _read_input(args: argparse.Namespace) -> tuple[str, str | None]:
    if args.file is None:
        return args.text, None
    try:
        return args.file.read_text(encoding="utf-8"), args.file.name
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"cannot read {args.file}: {getattr(exc, 'strerror', None) or exc}") from exc


def _input_options(args: argparse.Namespace) -> InputOptions:
    options = InputOptions()
    if args.mode:
        options["mode"] = args.mode
    if args.system_prompt:
        options["system_prompt"] = args.system_prompt
    if args.max_tokens:
        options["max_new_tokens"] = args.max_tokens
    if args.temperature is not None:
        options["temperature"] = args.temperature
    return options


def _cancel_after_interrupt(job: Job | None) -> None:
    if job is None:
        print("interrupted before the job id was known; if it was queued it will still run", file=sys.stderr)
        return
    try:
        cancelled = job.cancel()
    except MedGemmaClientError as exc:
        print(f"interrupted; could not cancel job {job.id}: {exc}", file=sys.stderr)
        return
    outcome = "cancelled" if cancelled else "could not cancel (already finished, or a local worker)"
    print(f"interrupted: {outcome} job {job.id}", file=sys.stderr)


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger(__package__)
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.DEBUG if verbose else logging.WARNING)


def _error(exc: BaseException) -> None:
    print(f"error: {one_line(str(exc), MAX_ERROR_LINE_CHARS)}", file=sys.stderr)


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number
