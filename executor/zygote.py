"""A warm interpreter that forks user processes: run as a script, standard library only.

Started by ``executor.zygotes`` as ``<python> zygote.py <fd>`` (the same interpreter and
site-packages a run would get from ``<python> main.py``), it waits on a SOCK_SEQPACKET socket
for requests, each a JSON object plus two file descriptors (the run's stdout and stderr pipes)
passed with SCM_RIGHTS, and answers with the pid of a forked child; when a child ends it sends
its exit code. It imports nothing beyond what interpreter start-up already loaded, so a fork
skips the start-up a fresh ``python main.py`` pays for.

The child becomes what ``python main.py`` would have been: a new session, fds 0/1/2 on
/dev/null and the two pipes, the run's working directory and environment, ``sys.argv`` and
``sys.path[0]`` of the script, the script run as ``__main__``, an uncaught exception printed
(without this file's frames) with exit code 1, ``SystemExit`` codes as python maps them.
Interpreter shutdown is done by hand, in python's order: non-daemon threads joined, atexit
handlers run, the run's own objects collected (its ``__main__`` namespace first), every open
file flushed, then ``os._exit``. What is skipped is the teardown of every module, which in a
forked child costs copy-on-write faults on every module for nothing the task can observe, except
``__del__`` methods of objects held by imported modules (open files are flushed regardless).

When the executor's end of the socket closes (the executor exited or was killed), the zygote
SIGKILLs the process groups of the children it still has, then exits: no user process outlives
its executor (the run may already be retried elsewhere).

The lease (a watchdog outside the executor's event loop): the executor renews a deadline on
``time.monotonic()`` (one clock for every process of the host, blind to wall-clock jumps) with
every heartbeat the server confirmed. When it passes, the zygote kills every child it has, with
its cgroup (frozen, then SIGKILLed, then thawed: nothing it forked escapes) or its process group
and the orphans re-parented to the zygote, and forks nothing more until it is renewed: a
frozen, partitioned or stalled executor's runs are gone before their heartbeat record expires,
which is what lets another executor retry them.

Confinement (``confine``, also used by the spawn launcher): before user code runs, the child
joins its run's cgroups, gets a mount namespace where folders an unprivileged UID cannot
traverse (e.g. a 0700 /root holding the interpreter) are covered by an empty tmpfs with only
the paths a run needs bound back in, gets its rlimits, and drops to its run UID (setgroups([]),
setgid, setuid, no_new_privs). The zygote itself runs as the executor's user, a child
subreaper (orphans of its runs are re-parented to it, not to init), with no secret in its
environment (a forked child's /proc/self/environ shows the zygote's).

Messages, executor → zygote: a run request ``{"id": n, ..., "lease": deadline}`` with its two
fds, ``{"lease": deadline}``. Zygote → executor: ``{"ready": pid}``, ``{"id": n, "pid": p}`` or
``{"id": n, "error": text}``, ``{"exit": p, "code": c, "fenced": bool}`` (fenced: killed when
the lease ran out).

The last hop of the trace "a run request becoming a process" (listed in ``broker.dispatch``).
"""

from __future__ import annotations

import atexit
import gc
import io
import json
import os
import runpy
import select
import signal
import socket
import sys
import time

TYPE_CHECKING = False  # typing is not imported at run time: it would cost every run
if TYPE_CHECKING:
    from typing import Any

MAX_MESSAGE = 1 << 20
_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
_SYS_MOUNT_SETATTR, _AT_FDCWD, _AT_RECURSIVE = 442, -100, 0x8000  # Linux >= 5.12, every arch
_libc_handle: list[object] = []


def _libc() -> Any:
    """libc through ctypes, loaded once (in the zygote before it forks: not per run)."""
    if not _libc_handle:
        import ctypes
        import ctypes.util

        _libc_handle.append(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True))
    return _libc_handle[0]


def preload() -> None:
    """Load libc here, once: children forked after it confine themselves without paying for
    ``ctypes.util.find_library`` (which runs ldconfig) each time."""
    _libc()


def _check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def confine(spec: dict[str, object]) -> None:
    """Put this (forked, not yet exec'd or run) process where its run belongs; see above."""
    for procs in spec.get("cgroups") or ():  # type: ignore[attr-defined]
        with open(str(procs), "w") as handle:
            handle.write(str(os.getpid()))
    expose = spec.get("expose")
    if spec.get("share"):
        _share(spec)
    elif expose:
        libc = _libc()
        _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _cover(expose)  # type: ignore[arg-type]
    limit = spec.get("rlimit_as")
    nproc = spec.get("rlimit_nproc")  # per UID: per run where each run has its own UID
    if limit or nproc:
        import resource

        if limit:
            resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))  # type: ignore[call-overload]
        if nproc:
            resource.setrlimit(resource.RLIMIT_NPROC, (int(nproc), int(nproc)))  # type: ignore[call-overload]
    uid = spec.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setgid(int(uid))  # type: ignore[call-overload]
        os.setuid(int(uid))  # type: ignore[call-overload]
        if spec.get("expose") or _libc_handle:
            _libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _cover(expose: list[list[Any]], *, private: bool = True) -> None:
    """In this process's own mount namespace: [folder, the paths under it to bind back, tmpfs
    options] — a 0700 folder on the way to the interpreter is covered by a tiny tmpfs; a temp
    dir (/tmp, /var/tmp, /dev/shm) by an empty sticky one of the run's own, gone with its
    mount namespace; with runs sharing the executor's UID, its work dir and key folders too."""
    libc = _libc()
    if private:
        _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
    for hide, keeps, *options in expose:
        held = [(keep, os.open(keep, os.O_PATH | os.O_CLOEXEC)) for keep in keeps]
        flags = options[0].encode() if options else b"mode=0755,size=64k"
        _check(
            libc.mount(b"tmpfs", hide.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, flags),
            f"mount tmpfs on {hide}",
        )  # fmt: skip
        for keep, fd in held:
            os.makedirs(keep, mode=0o755, exist_ok=True)
            _bind_held(libc, fd, keep)


def _bind_held(libc: Any, fd: int, target: str) -> None:
    """Bind what ``fd`` (an O_PATH descriptor, opened before covers hid it) names on ``target``
    (with what is mounted under it), and close ``fd``."""
    source = f"/proc/self/fd/{fd}".encode()
    _check(libc.mount(source, target.encode(), None, _MS_BIND | _MS_REC, None), f"bind {target}")
    os.close(fd)


def _share(spec: dict[str, Any]) -> None:
    """A run that shares the executor's UID, in a mount namespace of its own (through a user
    namespace where the executor is not root): every mount read-only, the shared temp dirs
    (``temps``) writable again, ``expose``'s tmpfs covers with what the run needs bound back,
    read-only (``readonly``: interpreter, SDK, environments) or writable (``writable``: its
    private directory and working copy); then a second user namespace, which owns nothing (so
    no power over those mounts), and no capability left."""
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    if uid != 0:
        # A process writes its own ID maps only while dumpable (else /proc/self is root's);
        # it is made undumpable again once they are written, before any of the run's code.
        libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
        _check(libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS), "unshare(CLONE_NEWUSER|CLONE_NEWNS)")
        _map_ids(uid, gid)
    else:
        _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
    temps = [(t, os.open(t, os.O_PATH | os.O_CLOEXEC)) for t in spec.get("temps") or ()]
    _set_attr(libc, "/", readonly=True, recursive=True)
    _set_attr(libc, "/proc", readonly=False)  # its ID maps are written below
    for temp, fd in temps:
        _bind_held(libc, fd, temp)
        _set_attr(libc, temp, readonly=False)
    expose = spec.get("expose") or []
    _cover(expose, private=False)
    for hide, _keeps, options in expose:
        if not options.startswith("mode=1777"):  # what hides is no scratch space either
            _set_attr(libc, hide, readonly=True)
    for path in spec.get("readonly") or ():  # bound on itself: read-only wherever it lies
        encoded = path.encode()
        _check(libc.mount(encoded, encoded, None, _MS_BIND | _MS_REC, None), f"bind {path}")
        _set_attr(libc, path, readonly=True, recursive=True)
    for path in spec.get("writable") or ():
        _set_attr(libc, path, readonly=False)
    try:  # a working directory under a cover would still see what is beneath it
        os.chdir(os.getcwd())
    except OSError:
        os.chdir("/")
    # A user namespace of its own that owns nothing: no power over this mount namespace (its
    # owner is the one above), so nothing here can be unmounted or remounted. One mount
    # namespace per run: a second one would leave the first to be torn down here, which waits
    # for an RCU grace period (milliseconds) before the run may start.
    _check(libc.unshare(_CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    _map_ids(uid, gid)
    _drop_capabilities(libc)
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def _set_attr(libc: Any, path: str, *, readonly: bool, recursive: bool = False) -> None:
    """mount_setattr(2): make the mount at ``path`` (and those under it) read-only or not."""
    import ctypes

    # struct mount_attr {u64 attr_set, attr_clr, propagation, userns_fd}; MOUNT_ATTR_RDONLY = 1
    attr = (ctypes.c_uint64 * 4)(1 if readonly else 0, 0 if readonly else 1, 0, 0)
    flags = _AT_RECURSIVE if recursive else 0
    result = libc.syscall(
        _SYS_MOUNT_SETATTR, _AT_FDCWD, path.encode(), flags, attr, ctypes.sizeof(attr),
    )  # fmt: skip
    _check(result, f"mount_setattr {path} {'read-only' if readonly else 'writable'}")


def _map_ids(uid: int, gid: int) -> None:
    """In a new user namespace: our own UID and GID, nothing else."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):  # fmt: skip
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)


def _drop_capabilities(libc: Any) -> None:
    """No capability now or after an exec (bounding set, ambient, effective/permitted)."""
    import ctypes

    with open("/proc/sys/kernel/cap_last_cap") as handle:
        last = int(handle.read())
    for cap in range(last + 1):
        _check(libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    _check(libc.capset(header, data), "capset")


def _send(sock: socket.socket, message: dict[str, object]) -> None:
    sock.send(json.dumps(message).encode())


def _reap(sock: socket.socket, live: set[int], fenced: set[int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        live.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        message: dict[str, object] = {"exit": pid, "code": code}
        if pid in fenced:
            fenced.discard(pid)
            message["fenced"] = True
        try:
            _send(sock, message)
        except OSError:
            pass  # the executor is gone: the next poll sees the closed socket


def _kill_cgroup(procs_files: list[str]) -> None:
    """Freeze the run's cgroup, SIGKILL every member, thaw (cgroup v1; see executor.cgroups)."""
    folders = [os.path.dirname(path) for path in procs_files]
    states = [os.path.join(f, "freezer.state") for f in folders if os.path.exists(
        os.path.join(f, "freezer.state"))]  # fmt: skip
    for state in states:
        try:
            with open(state, "w") as handle:
                handle.write("FROZEN")
            deadline = time.monotonic() + 0.2
            while time.monotonic() < deadline:
                with open(state) as handle:
                    if handle.read().strip() == "FROZEN":
                        break
                time.sleep(0.001)
        except OSError:
            pass
    for path in procs_files:
        try:
            with open(path) as handle:
                members = [int(line) for line in handle.read().split()]
        except OSError:
            continue
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    for state in states:
        try:
            with open(state, "w") as handle:
                handle.write("THAWED")
        except OSError:
            pass


def _orphans() -> list[int]:
    """Processes re-parented to this zygote (a subreaper) that it never forked itself."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and int(fields[1]) == me:
            found.append(int(entry))
    return found


def _fence(doomed: set[int], cgroups: dict[int, list[str]]) -> None:
    """The lease ran out: kill these children with everything they started."""
    for pid in doomed:
        _kill_cgroup(cgroups.get(pid) or [])
    _kill_all(doomed)
    _kill_all(set(_orphans()))


def _kill_all(live: set[int]) -> None:
    for pid in live:
        for kill in (os.killpg, os.kill):  # the group; the child itself if not yet its leader
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass


def serve(sock: socket.socket) -> tuple[dict[str, object], list[int]]:
    """Answer requests until the executor closes the socket; returns only in a forked child."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes poll() via wake_w
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    # Children share the zygote's objects copy-on-write; freezing them keeps the collector
    # (and the collection at exit) from touching, hence copying, those pages, in every run.
    gc.freeze()
    live: set[int] = set()
    fenced: set[int] = set()  # killed when the lease ran out, not yet reaped
    cgroups: dict[int, list[str]] = {}  # a child's cgroup.procs files
    lease: float | None = None  # time.monotonic() deadline; None: never given (no watchdog)
    _send(sock, {"ready": os.getpid()})
    while True:
        timeout_ms = None
        if lease is not None and live - fenced:
            timeout_ms = max(0, int((lease - time.monotonic()) * 1000) + 1)
        ready = poller.poll(timeout_ms)
        if lease is not None and live - fenced and time.monotonic() >= lease:
            doomed = live - fenced
            _fence(doomed, cgroups)
            fenced |= doomed
        for fd, _events in ready:
            if fd == wake_r:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                _reap(sock, live, fenced)
                for gone in set(cgroups) - live:
                    del cgroups[gone]
                continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 2)
            except OSError:
                data, fds = b"", []
            if not data:
                _kill_all(live)  # the executor is gone: so are its runs
                sys.exit(0)
            request = json.loads(data)
            if request.get("lease") is not None:
                lease = max(lease or 0.0, float(request["lease"]))
            if "id" not in request:  # a lease renewal
                continue
            if lease is not None and time.monotonic() >= lease:
                for passed in fds:
                    os.close(passed)
                _send(sock, {"id": request["id"], "error": "the executor's lease ran out "
                             "(no heartbeat confirmed by NATS in time)"})  # fmt: skip
                continue
            if (request.get("confine") or {}).get("expose"):
                _libc()  # loaded once here, not in every child
            try:
                pid = os.fork()
            except OSError as exc:
                for passed in fds:
                    os.close(passed)
                _send(sock, {"id": request["id"], "error": str(exc)})
                continue
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(wake_r)
                os.close(wake_w)
                sock.close()
                return request, fds
            live.add(pid)
            cgroups[pid] = list((request.get("confine") or {}).get("cgroups") or ())
            for passed in fds:
                os.close(passed)
            try:
                _send(sock, {"id": request["id"], "pid": pid})
            except OSError:
                pass  # the executor is gone: the next poll sees the closed socket
            _reap(sock, live, fenced)


def become(request: dict[str, object], fds: list[int]) -> None:
    """Turn this forked child into ``python <script>``; never returns."""
    os.setsid()
    out_fd, err_fd = fds
    try:
        confine(request.get("confine") or {})  # type: ignore[arg-type]
    except Exception as exc:
        os.write(err_fd, f"taskbus: could not confine the run: {exc}\n".encode())
        os._exit(126)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.close(out_fd)
    os.close(err_fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.chdir(str(request["cwd"]))
    os.environ.clear()
    os.environ.update(request["env"])  # type: ignore[call-overload]
    script = str(request["script"])
    sys.argv = [script]
    sys.path[0] = os.path.dirname(script)
    code = run(script)
    shutdown(code)


def run(script: str) -> int:
    """Run the script as ``__main__``; the exit code python would give."""
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        sys.stderr.write(f"{exc.code}\n")
        return 1
    except BaseException as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != script:
            tb = tb.tb_next
        # Printed as python prints it (no tb left: a SyntaxError, shown without a traceback).
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        return -signal.SIGINT if isinstance(exc, KeyboardInterrupt) else 1
    return 0


def shutdown(code: int) -> None:
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    atexit._run_exitfuncs()
    gc.collect()
    for obj in gc.get_objects():  # the frozen zygote objects are not listed: only the run's
        if isinstance(obj, io.IOBase):
            try:
                if not obj.closed:
                    obj.flush()
            except Exception:
                pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if code == -signal.SIGINT:  # as python does after an uncaught KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code & 0xFF)


if __name__ == "__main__":
    control = socket.socket(fileno=int(sys.argv[1]))
    if "--subreaper" in sys.argv[2:]:
        _libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # Its /proc (environ, fds, root) and its forked runs' are no other run's to read, even one
    # of the same UID (reading a non-dumpable process takes CAP_SYS_PTRACE).
    _libc().prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    job = serve(control)
    del control
    become(*job)
