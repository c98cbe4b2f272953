#!/usr/bin/env python3
"""What each way of isolating one action costs, against the folder sandbox's plain fork+exec.

Why this exists: one `bwrap` per action costs ~6 ms, most of it the kernel making and tearing
down five namespaces. Before building another namespace sandbox we measure the candidates on
this machine, per action, with the same work (`/bin/true`, and `sh -c 'cat in > out'` in a
staged folder with two read-only inputs):

* fork+exec: subprocess.Popen in its own session, as the folder sandbox spawns (the baseline);
* bwrap: the exact argv posbuild builds (namespaces.isolation + namespaces.command);
* zygote: one long-lived helper per build whose user, PID, network, IPC and UTS namespaces are
  made once; per action its PID 1 forks a child that unshares a fresh mount namespace, binds the
  system folders and the inputs read-only and the sandbox writable on a fresh tmpfs root,
  pivot_roots into it, drops every capability and execs the command;
* landlock: Popen with a preexec_fn that restricts the child with a Landlock ruleset (system
  folders read-only, inputs read, sandbox read-write; TCP bind/connect denied; signals and
  abstract Unix sockets scoped) made by the parent per action;
* landlock+netns: the same, the child also joining a network namespace made once (setns);
* posbuild's launcher (posbuild/exec/launcher.c) exec'd per action, as `[sandbox] mode =
  "landlock"` ran before its fork server: the compiled program joins the user, PID, network, IPC
  and UTS namespaces its `hold` made once, forks, and applies posbuild's own rules
  (`landlock.landlocked`) in the child before exec;
* posbuild's fork server (forkserver.py, what `mode = "landlock"` runs): the same launcher,
  started once (`serve`), makes each command as posbuild's child with the same rules; also
  without rules, for the price of the server alone.

Prints one table: median ms per action, the delta against fork+exec, and what each keeps. Also
checks, on real processes, that the hidden workspace file cannot be read and that a write
outside the sandbox fails. Linux x86_64 only. Run from the repository root:

    .venv/bin/python bench/bench_sandbox_alternatives.py --runs 300
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from posbuild.exec import landlock, namespaces  # noqa: E402
from posbuild.exec.forkserver import ForkServer  # noqa: E402
from posbuild.exec.landlock import Rules  # noqa: E402

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                       ctypes.c_void_p]

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 1, 28, 38
SECURE_ALL = 0b101111  # NOROOT(+locked), NO_SETUID_FIXUP(+locked), KEEP_CAPS_LOCKED
SYS_PIVOT_ROOT, SYS_CAPSET, SYS_SETNS = 155, 126, 308
SYS_LL_CREATE, SYS_LL_ADD, SYS_LL_RESTRICT = 444, 445, 446

LL_READ = 1 | 4 | 8  # EXECUTE, READ_FILE, READ_DIR
LL_FILE_ALL = 1 | 2 | 4 | (1 << 14) | (1 << 15)  # + WRITE_FILE, TRUNCATE, IOCTL_DEV
LL_FS_ALL = (1 << 16) - 1
LL_NET_ALL = 1 | 2  # BIND_TCP, CONNECT_TCP
LL_SCOPE_ALL = 1 | 2  # ABSTRACT_UNIX_SOCKET, SIGNAL
SYSTEM = ("/usr", "/etc", "/lib", "/lib64", "/bin", "/sbin", "/opt")


def _check(result: int, what: str) -> int:
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")
    return result


def _mount(source: str | None, target: str, kind: str | None, flags: int) -> None:
    def enc(text: str | None) -> bytes | None:
        return text.encode() if text is not None else None

    _check(libc.mount(enc(source), enc(target), enc(kind), flags, None), f"mount {target}")


# ---------------------------------------------------------------- landlock

class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The Landlock ABI version the kernel offers (0 when it has none)."""
    version = libc.syscall(SYS_LL_CREATE, None, 0, 1)
    return max(version, 0)


def landlock_ruleset(read: list[str], write: list[str]) -> int:
    """A ruleset fd: `read` readable and executable, `write` everything, TCP denied, signals
    and abstract sockets scoped to the action."""
    attr = _RulesetAttr(LL_FS_ALL, LL_NET_ALL, LL_SCOPE_ALL)
    ruleset = _check(libc.syscall(SYS_LL_CREATE, ctypes.byref(attr), ctypes.sizeof(attr), 0),
                     "landlock_create_ruleset")
    for paths, rights in ((read, LL_READ), (write, LL_FS_ALL)):
        for path in paths:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            allowed = rights if os.path.isdir(path) else rights & LL_FILE_ALL
            rule = _PathBeneath(allowed, fd)
            _check(libc.syscall(SYS_LL_ADD, ruleset, 1, ctypes.byref(rule), 0),
                   f"landlock_add_rule {path}")
            os.close(fd)
    return ruleset


def _drop_capabilities() -> None:
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    libc.prctl(PR_SET_SECUREBITS, SECURE_ALL, 0, 0, 0)  # root's exec grants nothing back
    _check(libc.syscall(SYS_CAPSET, header, data), "capset")


def landlock_child(ruleset: int, netns: int | None) -> Callable[[], None]:
    """The preexec_fn: join the shared network namespace, drop capabilities, restrict."""
    def restrict() -> None:
        if netns is not None:
            _check(libc.syscall(SYS_SETNS, netns, CLONE_NEWNET), "setns net")
        _drop_capabilities()
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        _check(libc.syscall(SYS_LL_RESTRICT, ruleset, 0), "landlock_restrict_self")
    return restrict


# ---------------------------------------------------------------- zygote

def _write(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def _mount_flags(path: str) -> int:
    f = os.statvfs(path).f_flag
    flags = f & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
    return flags | (MS_RELATIME if f & 4096 else 0)


def _bind(root: str, source: str, target: str, read_only: bool) -> None:
    inside = root + target
    if os.path.islink(source):
        os.makedirs(os.path.dirname(inside), exist_ok=True)
        os.symlink(os.readlink(source), inside)
        return
    if os.path.isdir(source):
        os.makedirs(inside, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(inside), exist_ok=True)
        if not os.path.exists(inside):
            os.close(os.open(inside, os.O_CREAT | os.O_WRONLY, 0o644))
    _mount(source, inside, None, MS_BIND | MS_REC)
    if read_only:
        _mount(None, inside, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _mount_flags(source))


def _action(root: str, request: dict) -> None:
    """In the forked child: a fresh mount namespace holding only what the action may see."""
    _check(libc.unshare(CLONE_NEWNS), "unshare mount")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV)
    for path in SYSTEM:
        if os.path.lexists(path):
            _bind(root, path, path, True)
    os.makedirs(root + "/dev")
    for device in ("null", "zero", "urandom", "random", "full"):
        _bind(root, "/dev/" + device, "/dev/" + device, False)
    os.makedirs(root + "/proc")
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + "/tmp")
    _mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV)
    sandbox = request["sandbox"]
    _bind(root, sandbox, sandbox, False)
    for path in request["inputs"]:
        _bind(root, path, path, True)
    os.chdir(root)
    _check(libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "umount old root")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir(request["cwd"])
    _drop_capabilities()
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    os.setsid()
    os.execv(request["argv"][0], request["argv"])


def _init(requests: int, replies: int, root: str) -> None:
    """PID 1 of the build's namespaces: one forked child per request, its status sent back."""
    with os.fdopen(requests, "rb", buffering=0) as inbox:
        for line in iter(inbox.readline, b""):
            request = json.loads(line)
            child = os.fork()
            if child == 0:
                try:
                    _action(root, request)
                except BaseException as error:  # noqa: BLE001  (the child must not return)
                    os.write(2, f"zygote child: {error}\n".encode())
                os._exit(127)
            _, status = os.waitpid(child, 0)
            os.write(replies, b"%d\n" % os.waitstatus_to_exitcode(status))
    os._exit(0)


class Zygote:
    """The build's helper: namespaces made once, one fork + mount namespace per action."""

    def __init__(self, root: str) -> None:
        requests_r, self._requests = os.pipe()
        self._replies, replies_w = os.pipe()
        parent = os.getpid()
        uid, gid = os.geteuid(), os.getegid()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(self._requests)
                os.close(self._replies)
                libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                if os.getppid() != parent:
                    os._exit(1)
                _check(libc.unshare(CLONE_NEWUSER), "unshare user")
                _write("/proc/self/setgroups", "deny")
                _write("/proc/self/uid_map", f"0 {uid} 1")
                _write("/proc/self/gid_map", f"0 {gid} 1")
                _check(libc.unshare(CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS),
                       "unshare")
                init = os.fork()
                if init == 0:
                    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                    _init(requests_r, replies_w, root)
                os.waitpid(init, 0)
            except BaseException as error:  # noqa: BLE001
                os.write(2, f"zygote: {error}\n".encode())
            os._exit(0)
        os.close(requests_r)
        os.close(replies_w)
        self._inbox = os.fdopen(self._replies, "rb", buffering=0)

    def run(self, argv: list[str], sandbox: str, inputs: list[str], cwd: str) -> int:
        request = {"argv": argv, "sandbox": sandbox, "inputs": inputs, "cwd": cwd}
        os.write(self._requests, json.dumps(request).encode() + b"\n")
        return int(self._inbox.readline())

    def close(self) -> None:
        os.close(self._requests)  # later forks hold copies: end it rather than wait for EOF
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


# ---------------------------------------------------------------- the runs

def _median_ms(run: Callable[[], int], runs: int) -> float:
    for _ in range(5):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        code = run()
        times.append(time.perf_counter() - start)
        if code != 0:
            raise SystemExit(f"a run exited with {code}")
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()

    top = tempfile.mkdtemp(prefix="posbuild-alt-", dir="/var/tmp")
    workspace = f"{top}/ws"
    base = f"{workspace}/.posbuild/sandbox"
    sandbox = f"{base}/1"
    exec_root = f"{sandbox}/exec"
    os.makedirs(f"{exec_root}/pkg")
    Path(f"{workspace}/secret.txt").write_text("hidden\n")
    inputs = [f"{exec_root}/pkg/a.txt", f"{exec_root}/pkg/b.txt"]
    for path in inputs:
        Path(path).write_text("x" * 100 + "\n")
    root = f"{top}/root"
    os.makedirs(root)
    cat = ["/bin/sh", "-c", "cat pkg/a.txt pkg/b.txt > out"]
    true = ["/bin/true"]
    env = {"PATH": "/usr/bin:/bin", "HOME": sandbox, "TMPDIR": f"{sandbox}/tmp"}

    bwrap = namespaces.find_bwrap()
    iso = namespaces.isolation(bwrap, [workspace, f"{workspace}/.posbuild/store", base],
                               [sys.prefix, os.path.realpath(sys.executable)]) if bwrap else None
    binds = [(f"{exec_root}/{rel}",) * 2
             for rel in namespaces.input_binds(["pkg/a.txt", "pkg/b.txt"], ["out"])]

    def popen(argv: list[str], preexec: Callable[[], None] | None = None) -> int:
        return subprocess.Popen(argv, cwd=exec_root, env=env, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=preexec).wait()

    def fork_exec(argv: list[str]) -> Callable[[], int]:
        return lambda: popen(argv)

    def with_bwrap(argv: list[str]) -> Callable[[], int]:
        return lambda: popen(namespaces.command(iso, sandbox, exec_root, binds, False, argv))

    netns = os.open("/proc/self/ns/net", os.O_RDONLY)  # replaced below when it can be made
    shared_net: int | None = None
    maker = os.fork()
    if maker == 0:  # a process that holds a fresh network namespace for the whole run
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        os._exit(0 if libc.unshare(CLONE_NEWNET) == 0 and time.sleep(3600) else 1)
    time.sleep(0.2)
    try:
        shared_net = os.open(f"/proc/{maker}/ns/net", os.O_RDONLY)
    except OSError:
        shared_net = None
    os.close(netns)

    def with_landlock(argv: list[str], net: int | None) -> Callable[[], int]:
        def run() -> int:
            ruleset = landlock_ruleset([*SYSTEM, "/dev", "/proc", *inputs], [sandbox, "/dev/null"])
            try:
                return popen(argv, landlock_child(ruleset, net))
            finally:
                os.close(ruleset)
        return run

    zygote = Zygote(root)
    launcher = _compile(top)
    holder = _holder() if launcher else None
    posbuild_shared = _posbuild_launcher(workspace, base)

    def with_launcher(options: list[str]) -> Callable[[list[str]], Callable[[], int]]:
        return lambda argv: lambda: popen([launcher, *options, "--", *argv])

    def with_zygote(argv: list[str]) -> Callable[[], int]:
        return lambda: zygote.run(argv, sandbox, inputs, exec_root)

    alternatives: list[tuple[str, Callable[[list[str]], Callable[[], int]], str]] = [
        ("fork+exec (folder)", fork_exec, "none beyond the folder"),
    ]
    if iso is not None:
        alternatives.append(("bwrap per action", with_bwrap, "all five"))
    alternatives.append(("Python zygote + mount ns", with_zygote,
                         "all five; the hidden path does not exist"))
    if landlock_abi() >= 6:
        alternatives.append(("Python landlock", lambda a: with_landlock(a, None),
                             "no read/write outside (stat still sees); TCP only; no die"))
        if shared_net is not None:
            alternatives.append(("Python landlock + shared netns",
                                 lambda a: with_landlock(a, shared_net),
                                 "no read/write outside (stat sees); no network; no die"))

    if launcher is not None:
        read = ["-r", *SYSTEM, "/dev", "/proc", *inputs, "-w", sandbox, "/dev/null"]
        alternatives.append(("C launcher, caps only", with_launcher([]),
                             "no capabilities (the price of a second exec)"))
        if shared_net is not None:
            alternatives.append(("C landlock + shared netns", with_launcher(
                ["-n", f"/proc/{maker}/ns/net", "-l", *read]),
                "no read/write outside (stat sees); no network; no die"))
            alternatives.append(("C landlock + shared netns + pid ns", with_launcher(
                ["-n", f"/proc/{maker}/ns/net", "-p", "-l", *read]),
                "all five, but stat sees hidden paths and /tmp is shared"))
        if holder is not None:
            mount_binds = ["-r", *SYSTEM, *inputs, "-w", sandbox]
            alternatives.append(("C shared user/net ns + pid + mount ns", with_launcher(
                ["-j", str(holder), "-p", "-m", root, *mount_binds]),
                "all five; the hidden path does not exist"))

    if posbuild_shared is not None:
        def with_posbuild(argv: list[str]) -> Callable[[], int]:
            full = landlock.command(posbuild_shared, sandbox, False, argv[0], argv)
            return lambda: popen(full)
        alternatives.append(("posbuild's launcher exec'd per action (before)", with_posbuild,
                             "files, network, capabilities, dies with posbuild (build PID ns)"))
        server = ForkServer(posbuild_shared.launcher,
                            landlock.HOLDER.pid(posbuild_shared.launcher))
        plain = ForkServer(posbuild_shared.launcher)
        rules = posbuild_shared.shared(False).writing(sandbox)

        def served(through: ForkServer,
                   given: Rules | None) -> Callable[[list[str]], Callable[[], int]]:
            def run(argv: list[str]) -> int:
                pid = through.spawn(argv[0], argv, env, exec_root, 1, 2, rules=given).pid
                return os.waitstatus_to_exitcode(os.wait4(pid, 0)[1])
            return lambda argv: lambda: run(argv)
        alternatives.append(("posbuild's fork server, no rules", served(plain, None),
                             "nothing beyond the folder (the price of the server)"))
        alternatives.append(("posbuild's fork server (mode = landlock)", served(server, rules),
                             "files, network, capabilities, dies with posbuild (build PID ns)"))

    # the guarantees, on real processes: the hidden file cannot be read, nothing written outside
    probe = ["/bin/sh", "-c", f"cat {workspace}/secret.txt; echo x > {workspace}/leak"]
    rows = []
    for name, make, keeps in alternatives:
        if os.path.exists(f"{workspace}/leak"):
            os.unlink(f"{workspace}/leak")
        with open(os.devnull, "w") as quiet, _redirect(quiet):
            make(probe)()
        leaked = os.path.exists(f"{workspace}/leak")
        costs = []
        for argv in (true, cat):
            costs.append(_median_ms(make(argv), args.runs))
        rows.append((name, costs, keeps, leaked))
    zygote.close()
    if posbuild_shared is not None:
        server.close()
        plain.close()
        landlock.HOLDER.close()
    if holder is not None:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
    os.kill(maker, signal.SIGKILL)
    os.waitpid(maker, 0)
    shutil.rmtree(top, ignore_errors=True)

    base_true, base_cat = rows[0][1]
    print(f"landlock ABI {landlock_abi()}, {args.runs} runs each, median ms per action\n")
    print("| alternative | /bin/true | Δ | cat in > out | Δ | wrote outside | keeps |")
    print("|---|---|---|---|---|---|---|")
    for name, (t, c), keeps, leaked in rows:
        print(f"| {name} | {t:.2f} | {t - base_true:+.2f} | {c:.2f} | {c - base_cat:+.2f} "
              f"| {'yes' if leaked else 'no'} | {keeps} |")
    return 0


def _compile(top: str) -> str | None:
    """bench/c/sandbox_exec.c built into `top`, or None without a C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    target = f"{top}/sandbox_exec"
    source = Path(__file__).resolve().parent / "c" / "sandbox_exec.c"
    done = subprocess.run([compiler, "-O2", "-o", target, str(source)], capture_output=True)
    return target if done.returncode == 0 else None


def _posbuild_launcher(workspace: str, base: str) -> landlock.Landlocked | None:
    """posbuild's own launcher and rules, or None where Landlock cannot run."""
    if landlock.abi() < landlock.MIN_ABI:
        return None
    try:
        return landlock.landlocked(landlock.compiled(), (workspace, base),
                                   (sys.prefix, os.path.realpath(sys.executable)))
    except OSError:
        return None


def _holder() -> int | None:
    """A process holding a user, network, IPC and UTS namespace for the whole run, or None."""
    uid, gid = os.geteuid(), os.getegid()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        try:
            _check(libc.unshare(CLONE_NEWUSER), "unshare user")
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"0 {uid} 1")
            _write("/proc/self/gid_map", f"0 {gid} 1")
            _check(libc.unshare(CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
            os.write(ready_w, b"1")
        except OSError:
            os._exit(1)
        signal.pause()
        os._exit(0)
    os.close(ready_w)
    ok = os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    return pid if ok else None


class _redirect:
    """Send fd 1 and 2 to `file` for the probe runs (their error messages are expected)."""

    def __init__(self, file) -> None:  # type: ignore[no-untyped-def]
        self._file = file

    def __enter__(self) -> None:
        self._saved = (os.dup(1), os.dup(2))
        os.dup2(self._file.fileno(), 1)
        os.dup2(self._file.fileno(), 2)

    def __exit__(self, *_: object) -> None:
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
