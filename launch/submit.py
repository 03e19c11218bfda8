"""Submit ``launch.train`` to a Ray cluster as a job, follow it, stop it or ask its status.

    python -m launch.submit --address http://127.0.0.1:8265 -- trainer.total_steps=50 rollout.num_workers=4
    python -m launch.submit --address http://127.0.0.1:8265 --no-wait -- reward=outcome_only
    python -m launch.submit --address http://127.0.0.1:8265 --status raysubmit_XXXX
    python -m launch.submit --address http://127.0.0.1:8265 --stop raysubmit_XXXX

Runs in the user's process, talks only HTTP to the head's dashboard (Ray's Job
Submission SDK). Everything after ``--`` is passed unchanged to ``launch.train`` (Hydra
overrides). The working directory (default: this checkout) is uploaded as the job's
``working_dir``, minus the virtual environment, data, runs and caches; the job's
``python`` is the head's, so the head must run in the project's environment
(``launch/cluster/README.md``). Exits 0 only when the job SUCCEEDED.

A head started by ``ray start --head`` has token authentication on (DESIGN.md 5): the
client needs ``RAY_AUTH_MODE=token`` and the head's token (``~/.ray/auth_token``,
``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("launch.submit")

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
"""The dashboard of a head started on this machine with the defaults of the cluster README."""
EXCLUDES = ["/.venv", "/data", "/runs", "/outputs", "/multirun", "/.git",
            "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", "*.egg-info"]
"""Left out of the uploaded working_dir: environments, datasets, results, caches.

Ray matches these like .gitignore lines: a bare ``data`` would also drop ``conf/data/``
and ``workers/data/``, so top-level folders are anchored with a leading ``/``.
"""
FINAL_STATUS_WAIT_S = 30.0
"""How long to wait for a terminal status once the log stream has closed."""

AUTH_HINT = ("the cluster uses token authentication (DESIGN.md 5): set RAY_AUTH_MODE=token in this shell and "
             "make the head's token available here (~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)")


class SubmitError(RuntimeError):
    """A failure to reach or talk to the cluster, with a message meant for the user."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Split ``argv`` at ``--``: our options before it, ``launch.train`` overrides after it."""
    argv = list(argv)
    overrides: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(
        prog="python -m launch.submit",
        description="Submit `python -m launch.train <overrides>` as a Ray job and follow its logs.",
        epilog="Example: python -m launch.submit --address http://127.0.0.1:8265 -- rollout.num_workers=2")
    parser.add_argument("--address", default=None,
                        help="the head's dashboard URL (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS or "
                             f"{DEFAULT_ADDRESS})")
    parser.add_argument("--working-dir", default=".", help="project checkout uploaded to the job (default: .)")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return without following it")
    parser.add_argument("--submission-id", default=None, help="job id to use (default: chosen by Ray)")
    parser.add_argument("--python", default="python",
                        help="interpreter on the head that runs the job (default: python on the head's PATH)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for the job and its actors (repeatable)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--stop", metavar="JOB_ID", help="stop a running job")
    action.add_argument("--status", metavar="JOB_ID", help="print a job's status")
    args = parser.parse_args(argv)
    if (args.stop or args.status) and overrides:
        parser.error("overrides after -- only go with a submission, not with --stop/--status")
    for item in args.env:
        if "=" not in item or item.startswith("="):
            parser.error(f"--env expects KEY=VALUE, got {item!r}")
    args.overrides = overrides
    return args


def resolve_address(address: str | None) -> str:
    """The address to use; an explicit ``--address`` wins over the environment.

    Ray's SDK lets ``RAY_API_SERVER_ADDRESS``/``RAY_ADDRESS`` override the address it is
    given (as ``ray.init`` does); a flag typed on the command line should not be
    silently replaced, so it is put where the SDK looks first.
    """
    if address:
        os.environ["RAY_API_SERVER_ADDRESS"] = address
        return address
    return os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def connect(address: str) -> Any:
    """A ``JobSubmissionClient`` for ``address``, or a ``SubmitError`` that says what to fix."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError as exc:
        raise SubmitError(f"the Ray dashboard at {address} refused the request ({_first_line(exc)}); "
                          f"{AUTH_HINT}") from exc
    except ConnectionError as exc:
        raise SubmitError(f"cannot reach the Ray dashboard at {address}: is the head running "
                          f"(`ray start --head`, see launch/cluster/README.md) and is this its dashboard "
                          f"address (http://HOST:8265 by default)?") from exc


def entrypoint(python: str, overrides: Sequence[str]) -> str:
    """The job's shell command; overrides are quoted so brackets and spaces survive the shell.

    >>> entrypoint("python", ["reward=outcome_only", "data.toyworld.hops=[3,4]"])
    "python -m launch.train reward=outcome_only 'data.toyworld.hops=[3,4]'"
    """
    return shlex.join([python, "-m", "launch.train", *overrides])


STOP_WAIT_S = "60"
"""How long ``--stop`` lets the job finish its step and write a checkpoint before Ray kills it
(``RAY_JOB_STOP_WAIT_TIME_S``, which the job's supervisor reads; Ray's default is 3 s)."""


def runtime_env(working_dir: Path, env: Sequence[str]) -> dict[str, Any]:
    """The job's runtime_env: the checkout as ``working_dir`` and any ``--env`` variables."""
    out: dict[str, Any] = {"working_dir": str(working_dir), "excludes": list(EXCLUDES)}
    env_vars = dict(item.split("=", 1) for item in env)
    env_vars.setdefault("RAY_JOB_STOP_WAIT_TIME_S", STOP_WAIT_S)
    out["env_vars"] = env_vars
    return out


def with_run_dir(overrides: Sequence[str], root: Path) -> list[str]:
    """``overrides`` with an absolute ``trainer.run_dir``: the job runs in a temporary copy of
    the checkout, so a relative run directory would be deleted with the job.

    >>> with_run_dir(["seed=1", "trainer.run_dir=runs/a"], Path("/work"))
    ['seed=1', 'trainer.run_dir=/work/runs/a']
    """
    out, given = [], False
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "trainer.run_dir" and value:
            given = True
            if not Path(value).is_absolute():
                item = f"{key}={root / value}"
        out.append(item)
    if not given:
        out.append(f"trainer.run_dir={root / 'runs' / time.strftime('%Y%m%d-%H%M%S')}")
    return out


def submit(client: Any, args: argparse.Namespace) -> str:
    """Submit the job; returns its submission id."""
    working_dir = Path(args.working_dir).resolve()
    if not (working_dir / "launch" / "train.py").is_file():
        raise SubmitError(f"{working_dir} is not the project checkout (no launch/train.py): run from the "
                          f"checkout or pass --working-dir")
    overrides = with_run_dir(args.overrides, Path.cwd().resolve())
    run_dir = next(o for o in overrides if o.startswith("trainer.run_dir=")).split("=", 1)[1]
    print(f"run directory (on the node that runs the job's driver): {run_dir}", flush=True)
    command = entrypoint(args.python, overrides)
    job_id = client.submit_job(entrypoint=command, runtime_env=runtime_env(working_dir, args.env),
                               submission_id=args.submission_id)
    print(f"submitted {job_id}: {command}", flush=True)
    return str(job_id)


async def _follow(client: Any, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def follow(client: Any, job_id: str) -> str:
    """Stream the job's logs until it ends; returns its final status."""
    try:
        asyncio.run(_follow(client, job_id))
    except RuntimeError as exc:  # the log stream broke; the status below still tells how the job ended
        logger.warning("log stream of %s ended early: %s", job_id, exc)
    deadline = time.monotonic() + FINAL_STATUS_WAIT_S
    status = client.get_job_status(job_id)
    # The stream closes when the driver exits, a moment before the job is marked terminal.
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    return str(status)


def report(client: Any, job_id: str) -> str:
    """One line: the job's status and Ray's message about it; returns the status."""
    info = client.get_job_info(job_id)
    # A failed job's message repeats the tail of its logs: its first line is the summary.
    message = (info.message or "").strip().splitlines()
    print(f"{job_id}: {info.status}" + (f" ({message[0].rstrip(':,')})" if message else ""), flush=True)
    return str(info.status)


def run(args: argparse.Namespace) -> int:
    """Do what the arguments ask; returns the exit code."""
    from ray.exceptions import AuthenticationError

    address = resolve_address(args.address)
    client = connect(address)
    try:
        if args.status:
            report(client, args.status)
            return 0
        if args.stop:
            was_running = client.stop_job(args.stop)
            print(f"{args.stop}: {'stop requested' if was_running else 'was not running'}", flush=True)
            return 0
        job_id = submit(client, args)
        if args.no_wait:
            print(f"follow with: python -m launch.submit --address {address} --status {job_id}")
            return 0
        try:
            follow(client, job_id)
        except KeyboardInterrupt:
            print(f"\nstopped following; the job keeps running. Stop it with: "
                  f"python -m launch.submit --address {address} --stop {job_id}", file=sys.stderr)
            return 130
        return 0 if report(client, job_id) == "SUCCEEDED" else 1
    except AuthenticationError as exc:
        raise SubmitError(f"{_first_line(exc)}; {AUTH_HINT}") from exc
    except RuntimeError as exc:  # the SDK's error for a failed request (unknown job id, bad runtime_env)
        raise SubmitError(_first_line(exc)) from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    # One line per .gitignore Ray skips while packing the working_dir is noise here.
    logging.getLogger("ray._private.runtime_env.packaging").setLevel(logging.WARNING)
    try:
        return run(args)
    except SubmitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
