"""The user commands: thin calls into ``sdk.Client``, printed as tables or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.text import LOG_KEEP, printable
from sdk.cli import FAILED, OK, USAGE, error

if TYPE_CHECKING:
    from sdk.client import Client
    from sdk.orchestration import Orchestration, RunOptions
    from sdk.run import TaskRun
    from sdk.task import Task


def _client(args: argparse.Namespace) -> Client:
    """A client whose current workspace is ``--workspace`` (which must exist)."""
    from sdk.cli.workspaces import open_client

    return open_client(args)


def _orchestration(client: Client, args: argparse.Namespace) -> Orchestration:
    """ORCH by id or name; with ``--workspace``, only one of that workspace."""
    from broker.errors import OrchestrationNotFound

    if not args.workspace:
        return client.get_orchestration(args.orchestration)
    found = [
        o
        for o in client.list_orchestrations(workspace_name=args.workspace)
        if args.orchestration in (o.id(), o.name())
    ]
    if not found:
        raise OrchestrationNotFound(
            f"No orchestration with id or name {args.orchestration!r} in workspace "
            f"{args.workspace!r}; `taskbus orchestrations --workspace {args.workspace}` shows "
            f"them."
        )
    return found[-1]


def _task(client: Client, args: argparse.Namespace) -> Task:
    """TASK_ID's task; with ``--workspace``, refused unless it is in that workspace."""
    from broker.errors import TaskNotFound

    task = client.get_task_by_id(args.task_id)
    if args.workspace and task.workspace_name() != args.workspace:
        raise TaskNotFound(
            f"Task {task.id()} is in workspace {task.workspace_name()!r}, not {args.workspace!r}."
        )
    return task


def _emit(args: argparse.Namespace, shown: Any, data: Any) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(shown)


def _json_args(raw: str | None) -> dict[str, Any] | None:
    """``--args``: a JSON object, or ``@file`` holding one (the library checks it is one)."""
    if raw is None:
        return None
    text = raw
    if raw.startswith("@"):
        try:
            text = Path(raw[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"--args {raw}: cannot read the file ({exc.strerror})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"--args is not valid JSON ({exc}); give an object such as '{{\"n\": 3}}'"
        ) from None
    except RecursionError:  # json recurses once per level
        from broker.errors import InvalidJsonArgs
        from broker.names import MAX_JSON_ARGS_DEPTH

        raise InvalidJsonArgs(
            f"--args is nested too deeply to read; at most {MAX_JSON_ARGS_DEPTH} levels are "
            f"allowed: flatten it"
        ) from None
    return value  # type: ignore[no-any-return]


def upload(args: argparse.Namespace) -> int:
    with _client(args) as client:
        orch = client.upload_orchestration(path=args.path, name=args.name)
        if args.wait:
            orch.wait_until_ready(args.timeout)
        _emit(args, orch, orch.to_dict())
    return OK


def orchestrations(args: argparse.Namespace) -> int:
    with _client(args) as client:
        found = client.list_orchestrations(workspace_name=args.workspace)
        _emit(args, found, [o.to_dict() for o in found])
    return OK


def run(args: argparse.Namespace) -> int:
    json_args = _json_args(args.args)
    if args.continuous and (args.wait or args.follow or args.timeout is not None):
        raise ValueError(
            "--continuous runs until `taskbus kill`: it takes no --wait, --follow or --timeout "
            "(follow a run with `taskbus logs TASK_ID -f`)"
        )
    with _client(args) as client:
        orch = _orchestration(client, args)
        if args.continuous:
            task = orch.run_continuously(args.name, json_args, args.debug, **_options(args))
            _emit(args, task, task.to_dict())
            return OK
        task = orch.run_once(args.name, json_args, args.timeout, args.debug, **_options(args))
        if not (args.wait or args.follow):
            _emit(args, task, task.to_dict())
            return OK
        if args.follow:
            if not args.json:
                name = printable(task.name())
                print(f"task {task.id()} ({name}): following its run", file=sys.stderr)
            _print_lines(args, task.last_runs()[0].logs(follow=True))
        status = task.wait()
        task.refresh()
        if args.json:  # after followed lines (one JSON string each), the task on one line too
            print(json.dumps(task.to_dict(), indent=None if args.follow else 2))
        elif args.follow:
            print(f"task {task.id()} ({printable(task.name())}): {status}", file=sys.stderr)
        else:
            print(task)
    return OK if status == "success" else FAILED


def schedule(args: argparse.Namespace) -> int:
    json_args = _json_args(args.args)
    with _client(args) as client:
        orch = _orchestration(client, args)
        task = orch.run_scheduled(
            args.name,
            args.cron,
            json_args,
            args.timeout,
            tz=args.tz,
            overlap=args.overlap,
            missed=args.missed,
            **_options(args),
        )
        _emit(args, task, task.to_dict())
    return OK


def _options(args: argparse.Namespace) -> RunOptions:
    """``--retries --retry-delay --pool --memory --cpus`` as ``run_*``'s options."""
    return {
        "retries": args.retries,
        "retry_delay_s": args.retry_delay,
        "pool": args.pool,
        "memory_limit": args.memory,
        "cpu_limit": args.cpus,
    }


def tasks(args: argparse.Namespace) -> int:
    from sdk.lists import TaskTable

    with _client(args) as client:
        found = client.list_tasks(killed=args.killed, workspace_name=args.workspace)
        _emit(args, TaskTable(found), [t.to_dict() for t in found])
    return OK


def runs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        found = _task(client, args).last_runs(args.limit, args.status)
        _emit(args, found, [r.to_dict() for r in found])
    return OK


def logs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        task = _task(client, args)
        found = task.last_runs()
        if not found and args.run_id is None:  # nothing failed: there is nothing to show yet
            if args.json:
                print("[]")
            else:
                print(f"task {task.id()} ({printable(task.name())}) has no runs yet")
            return OK
        chosen = _pick_run(found, args.run_id)
        if chosen is None:
            error(f"task {task.id()} ({task.name()}) has no run {args.run_id}; "
                  f"`taskbus runs {task.id()}` lists them")  # fmt: skip
            return USAGE
        if args.follow:
            _print_lines(args, chosen.logs(args.limit, follow=True))
        elif args.json:
            print(json.dumps(list(chosen.logs(args.limit)), indent=2))
        else:
            for line in chosen.logs(args.limit):
                print(printable(line, keep=LOG_KEEP))
    return OK


def _pick_run(found: list[TaskRun], run_id: str | None) -> TaskRun | None:
    if run_id is None:
        return found[0] if found else None
    return next((r for r in found if r.id() == run_id), None)


def _print_lines(args: argparse.Namespace, lines: Any) -> None:
    """Log lines as they arrive: JSON strings (exact, JSON escapes control characters) or
    text with control characters escaped except tabs (``broker.text``: a tab only moves the
    cursor forward, and ``cut -f`` keeps working)."""
    for line in lines:
        print(json.dumps(line) if args.json else printable(line, keep=LOG_KEEP), flush=True)


def kill(args: argparse.Namespace) -> int:
    with _client(args) as client:
        task = _task(client, args)
        task.kill()
        status = task.status()  # pending_kill while a run stops; killed once none is left
        if args.json:
            print(json.dumps({"id": task.id(), "name": task.name(), "status": str(status)}))
        else:
            print(f"task {task.id()} ({printable(task.name())}): {status}")
    return OK


def pause(args: argparse.Namespace) -> int:
    with _client(args) as client:
        task = _task(client, args).pause()
        task.refresh()
        _emit(args, task, task.to_dict())
    return OK


def resume(args: argparse.Namespace) -> int:
    with _client(args) as client:
        task = _task(client, args).resume()
        task.refresh()
        _emit(args, task, task.to_dict())
    return OK
