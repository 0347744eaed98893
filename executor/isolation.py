"""What keeps a run to itself: it holds only its own credential, and cannot read the
executor's secrets nor touch another run's files.

Every run gets:
- an allowlisted environment (``run_environment``): PATH, LANG/LC_*, TZ, PYTHONPATH, the
  in-task TASKBUS_* variables, HOME and TMPDIR — never the executor's credentials;
- a private directory ``<scratch>/<uuid>`` (0700, the run's UID) holding its HOME, TMPDIR, the
  0600 arguments file and, when ``Context.run_credentials`` gives one, ``run.creds``; removed
  after the run;
- where the executor may switch UIDs (root or CAP_SETUID): a UID of its own from a pool
  (``executor.uids``), so it cannot read the executor's files, /proc/<executor>/environ or
  another run's private directory, nor write the shared trees and virtualenvs (owned by the
  executor, never group/other-writable). Its working copy's files are hardlinks to the cached
  tree, read-only to it; its folders are the executor's with the run's group, sticky, so it
  may add files but not replace shipped ones (``Artifacts.hand_over``). Folders on the way to
  the interpreter, the SDK or the work dir that other users cannot traverse (a 0700 /root
  holding pyenv) are covered in the run's own mount namespace by an empty tmpfs with only
  those paths bound back: the rest of such a folder stays invisible to the run;
- without a UID to switch to (``--run-uids none``, or an executor that is not root): user
  and mount namespaces of its own (``SharedPlan``): every mount read-only but /tmp and
  /var/tmp, a /dev/shm of its own, the scratch dirs, work dir, data dir, HOME and key folders
  covered by an empty tmpfs with only its own private directory and copy (writable), the
  interpreter, the SDK and the environments (read-only) bound back, none of it in reach of a
  second user namespace with no capability left; the executor and its zygotes are not
  dumpable, so their /proc is no run's to read. Where the host refuses that, the start-up
  line says what a run can then reach;
- with a UID: /tmp, /var/tmp and /dev/shm of its own in that namespace (empty sticky tmpfs,
  gone with the run, with what the run needs under them bound back: its private directory,
  the work dir, ...), so nothing a run leaves there reaches the next run with its UID. Where
  the host refuses those mounts, the files a UID owns at the top of the real ones are removed
  when the UID is given back (a bounded sweep);
- a cgroup of its own (``executor.cgroups``) with its memory, CPU and process limits; without
  cgroups, the memory limit is an RLIMIT_AS, the process limit an RLIMIT_NPROC of its UID
  (none without one) and the CPU limit is not enforced.

What the host allows is decided once at start (a confined probe process must import the SDK as
a run UID) and said in one log line.

next: ``executor.process`` (``RunSpace.confine`` travels in the ``Launch``; the child applies
it with ``executor.zygote.confine`` before user code runs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from broker import names
from executor.cgroups import Cgroups, RunCgroup
from executor.environments import sdk_paths
from executor.uids import UidPool, can_switch_uids, remove_files_of, sweep
from executor.zygote import confine, preload

log = logging.getLogger(__name__)

ALLOWED_ENV = frozenset({"PATH", "LANG", "TZ", "PYTHONPATH"})
ALLOWED_ENV_PREFIXES = ("LC_",)
ARGS_NAME = "args.json"
CREDS_NAME = "run.creds"
CONNECTIONS_NAME = "connections.json"  # the task's workspace's connections, decrypted


def allowed_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The executor's variables a run may see: locale, PATH, TZ, PYTHONPATH (for ``sdk``)."""
    return {
        key: value for key, value in environ.items()
        if key in ALLOWED_ENV or key.startswith(ALLOWED_ENV_PREFIXES)
    }  # fmt: skip


def public_urls(urls: Iterable[str]) -> str:
    """Server URLs without any user:password in them (comma separated)."""
    cleaned = []
    for url in urls:
        parts = urlsplit(url)
        if parts.username or parts.password:
            host = parts.hostname or ""
            netloc = f"{host}:{parts.port}" if parts.port else host
            url = urlunsplit(parts._replace(netloc=netloc))
        cleaned.append(url)
    return ",".join(cleaned)


def exposures(paths: Iterable[Path]) -> list[tuple[str, list[str]]]:
    """For paths a run needs that sit under a folder other users cannot traverse: (that
    folder, the needed paths under it), the folder being the highest such ancestor."""
    hides: dict[str, set[str]] = {}
    for path in paths:
        try:
            real = Path(os.path.realpath(path))
            if not real.exists():
                continue
        except OSError:
            continue
        for ancestor in reversed(real.parents):  # "/" first
            if ancestor == Path("/"):
                continue
            if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                hides.setdefault(str(ancestor), set()).add(str(real))
                break
    found = []
    for hide, keeps in sorted(hides.items()):
        top = [k for k in sorted(keeps) if not any(k.startswith(o + "/") for o in keeps if o != k)]
        found.append((hide, top))
    return found


def private_temps(
    temps: Iterable[str], needed: Iterable[str], expose: list[tuple[str, list[str]]]
) -> tuple[list[tuple[str, list[str]]], list[tuple[str, list[str]]]]:
    """Temp dirs to cover with a run's own tmpfs, each with the needed paths under it (the
    top ones), and what is left of ``expose`` (a hidden folder under a temp dir is covered by
    the temp dir's tmpfs: only its needed paths are bound back)."""
    found: dict[str, list[str]] = {}
    for temp in temps:
        real = os.path.realpath(temp)
        if os.path.isdir(real) and real != "/":
            found.setdefault(real, [])
    under = {
        temp: sorted({path for path in needed if path.startswith(temp + "/")}) for temp in found
    }  # fmt: skip
    for temp, paths in under.items():
        found[temp] = [p for p in paths if not any(p.startswith(o + "/") for o in paths)]
    rest = [
        (hide, keeps) for hide, keeps in expose
        if not any(hide == temp or hide.startswith(temp + "/") for temp in found)
    ]  # fmt: skip
    return sorted(found.items()), rest


@dataclass
class RunSpace:
    """One run's private directory, UID and cgroup; ``close()`` gives them back."""

    private: Path
    uid: int | None
    cgroup: RunCgroup | None
    confine: dict[str, Any] = field(default_factory=dict)
    creds: Path | None = None
    connections: Path | None = None

    @property
    def home(self) -> Path:
        return self.private / "home"

    @property
    def tmp(self) -> Path:
        return self.private / "tmp"

    @property
    def args_file(self) -> Path:
        return self.private / ARGS_NAME

    def write_private(self, name: str, text: str) -> Path:
        """A 0600 file of the run's own in its private directory."""
        path = self.private / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            if self.uid is not None:
                os.fchown(fd, self.uid, self.uid)
            with os.fdopen(fd, "w") as handle:
                fd = -1
                handle.write(text)
        finally:
            if fd >= 0:
                os.close(fd)
        return path


class Isolation:
    """What this host allows for runs, decided once at start."""

    def __init__(
        self,
        *,
        scratch: Path,
        pool: UidPool | None,
        cgroups: Cgroups | None,
        expose: list[tuple[str, list[str]]],
        summary: str,
        temps: list[tuple[str, list[str]]] | None = None,
        max_pids: int | None = None,
        shared: SharedPlan | None = None,
    ) -> None:
        self.scratch = scratch
        self.pool = pool
        self.cgroups = cgroups
        self.expose = expose
        self.summary = summary
        self.temps = temps  # None: runs share the host's temp dirs
        self.max_pids = max_pids
        self.shared = shared  # runs share our UID, each in namespaces of its own

    @classmethod
    def start(
        cls,
        *,
        owner: str,
        scratch: Path,
        work_dir: Path,
        env_dir: Path,
        run_uids: range | None,
        use_cgroups: bool = True,
        max_pids: int | None = names.DEFAULT_MAX_RUN_PIDS,
        hidden: Iterable[Path] = (),
    ) -> Isolation:
        """``hidden``: the folders of the executor's credential and key files (hidden from
        runs that share its UID)."""
        scratch.mkdir(parents=True, exist_ok=True)
        os.chmod(scratch, 0o711)  # runs reach their own folder, list nobody's
        if scratch.parent.name.startswith("taskbus-"):  # the parent of this user's executors
            with contextlib.suppress(OSError):
                os.chmod(scratch.parent, 0o711)
        cgroups, cgroup_note = Cgroups.probe(owner) if use_cgroups else (None, "cgroups off")
        if cgroups is None:
            cgroup_note += (
                ": kill and timeout end the run's process group, its UID's processes and "
                "orphans re-parented to the launcher; memory limits are RLIMIT_AS, CPU limits "
                "are not enforced"
            )
        pool: UidPool | None = None
        expose: list[tuple[str, list[str]]] = []
        temps: list[tuple[str, list[str]]] | None = None
        shared: SharedPlan | None = None
        needed = [
            Path(sys.base_prefix), Path(sys.prefix), Path(sys.executable).parent,
            *map(Path, sdk_paths()),
            *(Path(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p),
            work_dir, env_dir, scratch,
        ]  # fmt: skip
        real = [os.path.realpath(p) for p in needed if p.exists()]
        if run_uids is None:
            uid_note = "runs share the executor's UID (--run-uids none)"
        elif not can_switch_uids():
            uid_note = "runs share the executor's UID (it is neither root nor has CAP_SETUID)"
        else:
            pool = UidPool(run_uids)
            expose = exposures(needed)
            temps, rest = private_temps(names.RUN_TEMP_DIRS, real, expose)
            problem = _probe(pool, _covers(rest, temps, scratch))
            if problem is None:
                expose = rest
                temp_note = "own /tmp, /var/tmp, /dev/shm"
            else:  # e.g. no CAP_SYS_ADMIN for tmpfs: a sweep of the shared ones instead
                temps = None
                problem = _probe(pool, expose)
                temp_note = f"shared temp dirs, swept when a UID is given back ({problem})"
            if problem is None:
                uid_note = (
                    f"runs get their own UID from {run_uids.start}-{run_uids.stop - 1} "
                    f"({temp_note})"
                )
            else:
                pool, expose, temps = None, [], None
                uid_note = f"runs share the executor's UID (a run UID {problem})"
        if pool is None:
            plan = SharedPlan.make(
                scratch=scratch, work_dir=work_dir, env_dir=env_dir, needed=real,
                hidden=hidden,
            )  # fmt: skip
            problem = plan.probe()
            if problem is None:
                shared = plan
                uid_note += (
                    ", each in user and mount namespaces of its own: every mount read-only "
                    "but /tmp and /var/tmp, a /dev/shm of its own, the work dir, scratch dirs, "
                    "data dir, HOME and key folders hidden, only its own private directory and "
                    "working copy writable; it shares /tmp and can signal other runs' "
                    "processes. Run the executor as root or with CAP_SETUID for runs of their "
                    "own UID"
                )
            else:
                uid_note += (
                    f" and cannot have namespaces of their own ({problem}), so a run can read "
                    "and write what the executor's user can: its credential and key files, "
                    "its caches and other runs' private directories (their arguments, "
                    "credentials and connections). Share such an executor only among runs "
                    "that trust each other, or run it as root or with CAP_SETUID; the rest "
                    "still applies"
                )
        if max_pids is not None and cgroups is None and pool is None:
            cgroup_note += "; no process limit (it needs a cgroup or a run UID)"
        if pool is not None or shared is not None:
            preload()  # the spawn launcher confines in children forked from this process
        summary = f"{uid_note}; {cgroup_note}"
        return cls(
            scratch=scratch, pool=pool, cgroups=cgroups, expose=expose, summary=summary,
            temps=temps, max_pids=max_pids, shared=shared,
        )  # fmt: skip

    def open(
        self,
        key: str,
        *,
        memory_limit_bytes: int | None,
        cpu_limit: float | None,
        copy: Path | None = None,
    ) -> RunSpace:
        """The run's private space; ``copy``: its working copy (the one folder of the work
        dir a run that shares our UID sees, besides the environments)."""
        uid = self.pool.acquire() if self.pool is not None else None
        private = self.scratch / uuid.uuid4().hex
        cgroup = None
        try:
            private.mkdir(mode=0o700)
            for sub in ("home", "tmp"):
                (private / sub).mkdir(mode=0o700)
            if uid is not None:
                for folder in (private, private / "home", private / "tmp"):
                    os.chown(folder, uid, uid)
            spec: dict[str, Any] = {}
            if self.cgroups is not None:
                cgroup = self.cgroups.create(
                    key, memory_limit_bytes=memory_limit_bytes, cpu_limit=cpu_limit,
                    max_pids=self.max_pids,
                )  # fmt: skip
                spec["cgroups"] = cgroup.procs_files
            else:
                if memory_limit_bytes is not None:
                    spec["rlimit_as"] = memory_limit_bytes
                if uid is not None and self.max_pids is not None:
                    spec["rlimit_nproc"] = self.max_pids  # its UID is its own
            if uid is not None:
                spec["uid"] = uid
                covers = _covers(self.expose, self.temps, private)
                if covers:
                    spec["expose"] = covers
            elif self.shared is not None:
                spec.update(self.shared.confine(private, copy))
        except BaseException:
            shutil.rmtree(private, ignore_errors=True)
            if cgroup is not None:
                cgroup.remove()
            if uid is not None and self.pool is not None:
                self.pool.release(uid)
            raise
        return RunSpace(private=private, uid=uid, cgroup=cgroup, confine=spec)

    def sweep(self, space: RunSpace) -> None:
        """SIGKILL every process left running as the run's UID (without cgroups)."""
        if space.uid is not None:
            sweep(space.uid)

    def close_space(self, space: RunSpace) -> None:
        shutil.rmtree(space.private, ignore_errors=True)
        if space.cgroup is not None:
            space.cgroup.remove()
        if space.uid is not None and self.pool is not None:
            if self.temps is None:  # it wrote the host's temp dirs: what it left goes first
                sweep(space.uid)
                remove_files_of(space.uid, names.RUN_TEMP_DIRS, names.RUN_TEMP_SWEEP_MAX_ENTRIES)
            self.pool.release(space.uid)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        if self.cgroups is not None:
            self.cgroups.close()


def _covers(
    expose: list[tuple[str, list[str]]],
    temps: list[tuple[str, list[str]]] | None,
    private: Path,
) -> list[list[Any]]:
    """``confine``'s mounts for a run whose private directory is ``private``."""
    covers: list[list[Any]] = [[hide, keeps] for hide, keeps in expose]
    options = f"mode=1777,{names.RUN_TEMP_TMPFS_OPTIONS}"
    for temp, keeps in temps or ():
        own = [str(private)] if str(private).startswith(temp + "/") else []
        mine = [k for k in keeps if not own or not own[0].startswith(k + "/")]
        covers.append([temp, mine + own, options])
    return covers


SHM = "/dev/shm"
COVER_OPTIONS = "mode=0755,size=64k"  # what hides (read-only once what is needed is back)


@dataclass(frozen=True)
class SharedPlan:
    """Where runs share the executor's UID, what each run's own mount namespace looks like:
    every mount read-only, but the host's /tmp and /var/tmp (shared, as for any process of
    that user; a run's TMPDIR is its own); a /dev/shm of its own; an empty tmpfs over the
    executors' scratch dirs (every run's private directory), the work dir (zips, cached trees,
    other runs' copies) and the folders the daemon names (its credential and key folders, the
    data dir with the server's store, its HOME), with only what the run needs bound back: the
    interpreter, the SDK and the environments read-only, its private directory and working
    copy writable."""

    temps: tuple[str, ...]
    hides: tuple[tuple[str, str], ...]  # (folder, tmpfs options), shallowest first
    needed: tuple[str, ...]  # real paths every run needs, read-only
    scratch: Path

    @classmethod
    def make(
        cls,
        *,
        scratch: Path,
        work_dir: Path,
        env_dir: Path,
        needed: list[str],
        hidden: Iterable[Path],
    ) -> SharedPlan:
        # Every executor of this user keeps its scratch dir in one parent: all are covered.
        top = scratch.parent if scratch.parent.name.startswith("taskbus-") else scratch
        found: dict[str, str] = {}
        shm = os.path.realpath(SHM)
        if os.path.isdir(shm):  # its own, as in any sandbox: executors' scratch dirs live there
            found[shm] = f"mode=1777,{names.RUN_TEMP_TMPFS_OPTIONS}"
        for folder in (top, work_dir, *hidden):
            real = os.path.realpath(folder)
            if os.path.isdir(real) and real != "/":
                found.setdefault(real, COVER_OPTIONS)
        covered = {os.path.realpath(work_dir), os.path.realpath(scratch)}
        keep = {p for p in needed if p not in covered} | {os.path.realpath(env_dir)}
        temps = {os.path.realpath(t) for t in names.RUN_TEMP_DIRS if os.path.isdir(t)}
        return cls(
            temps=tuple(sorted(temps - {"/", shm})),
            hides=tuple(sorted(found.items(), key=lambda h: h[0].count("/"))),
            needed=tuple(sorted(keep)),
            scratch=scratch,
        )

    def confine(self, private: Path, copy: Path | None) -> dict[str, Any]:
        """``zygote.confine``'s spec for one run."""
        writable = [os.path.realpath(private), *([os.path.realpath(copy)] if copy else [])]
        wanted = [*self.needed, *writable]
        covers: list[list[Any]] = []
        for hide, options in self.hides:
            inside = [c for c in covers if hide.startswith(c[0] + "/")]
            if inside and not any(
                hide == k or hide.startswith(k + "/") for c in inside for k in c[1]
            ):
                continue  # under a cover and not bound back: hidden already
            under = sorted({w for w in wanted if w.startswith(hide + "/")})
            top = [w for w in under if not any(w.startswith(o + "/") for o in under)]
            covers.append([hide, top, options])
        return {
            "share": True, "temps": list(self.temps), "expose": covers,
            "readonly": list(self.needed), "writable": writable,
        }  # fmt: skip

    def probe(self) -> str | None:
        """Start a run's interpreter confined as a run, importing the SDK and writing in its
        private directory: None if that works, else why."""
        private = self.scratch / f"probe-{uuid.uuid4().hex}"
        private.mkdir(mode=0o700)
        check = f"import sdk; open({str(private / 'ok')!r}, 'w').close()"
        try:
            return _run_probe(self.confine(private, None), check)
        finally:
            shutil.rmtree(private, ignore_errors=True)


def _run_probe(spec: dict[str, Any], check: str = "import sdk") -> str | None:
    try:
        result = subprocess.run(
            [sys.executable, "-c", check],
            preexec_fn=lambda: confine(spec),
            env=allowed_environment(os.environ),
            cwd="/",
            capture_output=True,
            timeout=names.RUN_UID_PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot be set up here: {exc}"
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        return f"cannot start the interpreter and import sdk: {reason[0]}"
    return None


def _probe(pool: UidPool, expose: list[list[Any]] | list[tuple[str, list[str]]]) -> str | None:
    """Start ``python -c 'import sdk'`` confined as a run UID: None if it works, else why."""
    uid = pool.acquire()
    try:
        return _run_probe({"uid": uid, "expose": expose})
    finally:
        pool.release(uid)
