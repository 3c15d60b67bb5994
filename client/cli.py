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

from .batch import FORMATS, BatchOptions, BatchRun
from .constants import BATCH_CONCURRENCY, MAX_ERROR_LINE_CHARS, WAIT_TIMEOUT_S
from .errors import AuthenticationError, ConfigurationError, InvalidRequestError, MedGemmaClientError, one_line
from .inputs import InputOptions, chat_message
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
            if args.chat:
                return _run_chat(args, client)
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
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--text", help="the note text")
    source.add_argument("--file", type=Path, help="read the note from this UTF-8 file")
    source.add_argument("--batch", type=Path, metavar="DIR", help="summarise every DIR/**/*.md")
    source.add_argument("--health", action="store_true", help="print the endpoint's health")
    parser.add_argument(
        "--chat",
        action="store_true",
        help="a conversation: --text/--file (or the first line of stdin) opens it, "
        "then each further line of stdin is the next turn, until end of input",
    )

    job = parser.add_argument_group("job options")
    job.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH_OR_URL",
        help="attach an image file, or an https:// URL the worker fetches (repeatable)",
    )
    job.add_argument("--mode", choices=("summarize", "general"), help="worker mode (worker default: summarize)")
    job.add_argument("--system-prompt", metavar="TEXT", help="replace the worker's system prompt")
    job.add_argument("--max-tokens", type=_positive_int, metavar="N", help="maximum new tokens")
    job.add_argument("--temperature", type=float, metavar="T", help="sampling temperature")
    job.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="text: the answer as prose (batch: .md files); json: the built-in clinical summary "
        "object, decoded to always fit its schema (batch: .json files); summarize mode only",
    )
    job.add_argument(
        "--adapter", metavar="NAME", help="answer with this LoRA adapter of the worker (default: the base model)"
    )
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
    if not (args.text is not None or args.file or args.batch or args.health or args.chat):
        parser.error("one of the arguments --text --file --batch --health --chat is required")
    if args.chat:
        for flag, used in (("--batch", args.batch), ("--health", args.health), ("--json", args.json)):
            if used:
                parser.error(f"{flag} cannot be used with --chat")
        if args.format == "json":
            parser.error("--format json cannot be used with --chat")
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
    result = _answer(args, client, label, text=text, options=options)
    if result is None:
        return EXIT_INTERRUPTED
    if args.format == "json":
        parsed = result.json_object()  # raises when the object was cut off
        if not args.json and not args.stream:
            print(json.dumps(parsed, indent=2, ensure_ascii=False))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    elif not args.stream and args.format == "text":
        print(result.text)
    return EXIT_OK


def _run_chat(args: argparse.Namespace, client: MedGemmaClient) -> int:
    """One job per turn, each sent with the whole conversation so far."""
    first, label = _read_input(args) if args.text is not None or args.file else (_next_turn(), None)
    messages: list[dict[str, object]] = []
    images = args.image
    turn = first
    while turn is not None:
        messages.append(chat_message("user", turn, images))
        images = []
        result = _answer(args, client, label, messages=messages, options=_input_options(args))
        if result is None:
            return EXIT_INTERRUPTED
        if not args.stream:
            print(result.text, flush=True)
        messages.append(chat_message("assistant", result.text))
        turn = _next_turn()
    return EXIT_OK


def _next_turn() -> str | None:
    """The next non-empty line of stdin (a prompt on stderr when a person types), or None at its end."""
    while True:
        if sys.stdin.isatty():
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return None
        if line.strip():
            return line.rstrip("\n")


def _answer(
    args: argparse.Namespace,
    client: MedGemmaClient,
    label: str | None,
    *,
    options: InputOptions,
    text: str | None = None,
    messages: list[dict[str, object]] | None = None,
) -> JobResult | None:
    """Submit one job and wait for it (printing it as it streams); None after Ctrl-C, with the job cancelled."""
    if messages is not None:
        options["messages"] = messages
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
            if not args.json:
                sys.stdout.write("\n")
            result = job.result
        else:
            job = client.run(text, sync=not args.use_async, label=label, **options)
            if args.use_async:
                print(f"job {job.id} submitted", file=sys.stderr)
            result = job.wait(cancel_on_timeout=True)
    except KeyboardInterrupt:
        _cancel_after_interrupt(job)
        return None
    assert result is not None  # stream() sets job.result when it ends without raising
    logging.getLogger(__name__).info(
        "job %s done: %s prompt + %s completion tokens", result.job_id, result.prompt_tokens, result.completion_tokens
    )
    return result


def _run_batch(args: argparse.Namespace) -> int:
    options = BatchOptions(
        concurrency=args.concurrency,
        overwrite=args.overwrite,
        use_async=args.use_async,
        output_format=args.format,
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
    if args.format == "json":
        options["format"] = "json"
    if args.adapter:
        options["adapter"] = args.adapter
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
