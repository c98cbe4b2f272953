"""Layer 0: the Dask cluster as the executor sees it — its address, the connection, what its workers
declare and which actions fit them (ORCH-05), and the desk that hands secrets to one worker.

These are the parts of the Dask executor (dask_executor.py) that need neither the sandbox nor the
wire format, kept apart so each module stays one concern. `distributed` is imported only inside
functions: posbuild runs without it until a build asks for the dask executor, and then says how
to install it.

Placement. Dask sends a task that requests resources only to a worker that declared at least that
much (`dask worker --resources "cpu=4,mem_mb=8192"`), and never more at once than it declared. If
any worker of the cluster declares `cpu` or `mem_mb`, every action requests its non-zero `cpu`
and `mem_mb`; workers that declare neither then receive only actions of cpu=0 and mem_mb=0. If
none does (a plain `dask worker`, for a try), actions are submitted without resources and each
takes one worker thread, so only actions of cpu<=1 without mem_mb fit. `io` is a budget of the
local disk and is not sent.

Secrets. The task that runs an action carries a random token and the address of a listener in the
client's Dask event loop, never a secret's value; the worker that runs the action connects there
with the cluster's comm settings (TLS when the cluster uses it), presents the token and receives
the values, which then live only in the sandbox's environment. So values pass through no scheduler
and rest on no worker. The token is valid while the action is in flight (a retry on another
worker fetches again) and forgotten when it ends.
"""

from __future__ import annotations

import logging
import secrets as tokens
import threading
from dataclasses import dataclass
from typing import Any, Sequence

from posbuild.core.action import Action
from posbuild.workspace.config import Config
from posbuild.errors import ActionFailed, ResourceOversubscription, UsageError

INSTALL_HINT = "pip install 'posbuild[dask]'"
DEFAULT_PORT = 8786
CONNECT_TIMEOUT = 10.0  # seconds to reach the scheduler, and to wait for a first worker, at most
PLACED_RESOURCES = ("cpu", "mem_mb")  # Action.resources[:2], sent to Dask as worker resources


# -- the address -----------------------------------------------------------------------------------


def import_distributed() -> Any:
    """The `distributed` package, or a one-line error saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise UsageError("the dask executor needs the 'distributed' package, which is not "
                         f"installed: {INSTALL_HINT}") from None
    return distributed


def scheduler_address(text: str) -> str:
    """A Dask address from `dask://HOST[:PORT]`, `tcp://…`, `tls://…` or `HOST[:PORT]` (port
    8786)."""
    rest = text.strip()
    scheme = "tcp"
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        scheme = "tcp" if scheme == "dask" else scheme
    rest = rest.rstrip("/")
    if scheme not in ("tcp", "tls"):
        raise UsageError(
            f"bad Dask scheduler address {text!r}: the scheme must be dask://, tcp:// or tls://")
    if rest.startswith("["):  # an IPv6 literal, [::1]:8786
        inside, _, port = rest[1:].partition("]")
        host, port = f"[{inside}]" if inside else "", port.removeprefix(":")
    else:
        host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    port = port or str(DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"bad Dask scheduler address {text!r}: expected dask://HOST:PORT")
    return f"{scheme}://{host}:{port}"


def executor_address(option: str, config: Config) -> str | None:
    """The scheduler to run on, or None to run here: `--executor` first, then `[executor]`."""
    if option == "local" or (not option and config.executor == "local"):
        return None
    if option:
        return scheduler_address(option)
    if not config.executor_address:
        raise UsageError('[executor] kind = "dask" needs an address in posbuild.toml, e.g. '
                         'address = "tcp://127.0.0.1:8786" (or pass --executor dask://HOST:PORT)')
    return scheduler_address(config.executor_address)


# -- placement -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What one worker declared it can hold."""

    address: str
    threads: int
    resources: tuple[tuple[str, float], ...]  # sorted (name, amount), as given to `--resources`

    def declared(self, name: str) -> float:
        """How much of resource `name` the worker declared (0 when it did not)."""
        return dict(self.resources).get(name, 0.0)


def declares_resources(workers: Sequence[WorkerInfo]) -> bool:
    """Whether actions are placed by resources (some worker declares cpu or mem_mb) or by
    threads."""
    return any(w.declared(name) for w in workers for name in PLACED_RESOURCES)


def dask_resources(request: Sequence[int], by_resources: bool) -> dict[str, int]:
    """The worker resources an action of `request` (cpu, mem_mb, ...) takes on the cluster."""
    if not by_resources:
        return {}
    return {name: amount for name, amount in zip(PLACED_RESOURCES, request) if amount}


def fits(request: Sequence[int], worker: WorkerInfo, by_resources: bool) -> bool:
    """Whether `worker` alone could ever run an action of `request` (cpu, mem_mb, ...)."""
    if by_resources:
        return all(worker.declared(name) >= amount
                   for name, amount in dask_resources(request, True).items())
    return request[0] <= 1 and request[1] == 0 and worker.threads >= 1


def check_fits(actions: Sequence[Action], workers: Sequence[WorkerInfo], address: str) -> None:
    """ORCH-05 for the first action (by label) that no worker of the cluster could run."""
    by_resources = declares_resources(workers)
    requests = {a.resources[:2] for a in actions}  # few distinct requests, however many actions
    bad = {r for r in requests if not any(fits(r, w, by_resources) for w in workers)}
    if not bad:
        return
    action = min((a for a in actions if a.resources[:2] in bad), key=lambda a: a.label)
    asked = " ".join(f"{n}={v}" for n, v in zip(PLACED_RESOURCES, action.resources) if v) or "cpu=0"
    if by_resources:
        declared = sorted({" ".join(f"{n}={w.declared(n):g}" for n in PLACED_RESOURCES)
                           for w in workers})
        detail = f"no worker declares that much ({'; '.join(declared)})"
    else:
        detail = "its workers declare no resources, so each runs actions of cpu<=1 without mem_mb"
    raise ResourceOversubscription(
        f"{action.label} requests {asked} but the Dask cluster at {address} cannot run it: "
        f"{detail}; start "
        f'workers with --resources "cpu=N,mem_mb=M"')


# -- the connection --------------------------------------------------------------------------------


def connect(address: str) -> tuple[Any, list[WorkerInfo]]:
    """A Dask client for the scheduler at `address` and its workers, waiting (bounded) for one.

    Dask's own configuration applies (TLS, `distributed.comm.timeouts.connect` when shorter).
    Results are fetched from the workers directly, not relayed by the scheduler.
    """
    distributed = import_distributed()
    from dask import config as dask_config, utils as dask_utils

    for name in ("distributed", "distributed.client", "distributed.comm", "distributed.core",
                 "distributed.batched"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # posbuild reports what matters itself
    configured = dask_utils.parse_timedelta(dask_config.get("distributed.comm.timeouts.connect",
                                                            None), "seconds")
    timeout = min(CONNECT_TIMEOUT, configured or CONNECT_TIMEOUT)
    try:
        client = distributed.Client(address, timeout=timeout, set_as_default=False,
                                    direct_to_workers=True)
    except Exception as error:
        raise ActionFailed(f"cannot reach the Dask scheduler at {address} ({describe(error)}); "
                           "start one with "
                           f"`dask scheduler`, or build with --executor local") from None
    try:
        workers = workers_of(client)
        if not workers:
            try:
                client.wait_for_workers(1, timeout=timeout)
            except Exception:
                pass
            workers = workers_of(client)
        if not workers:
            raise ActionFailed(f"the Dask scheduler at {address} has no workers; start one with "
                               f"`dask worker {address}`")
    except BaseException:
        client.close(timeout=2)
        raise
    return client, workers


def workers_of(client: Any) -> list[WorkerInfo]:
    """The workers connected now, with what each declared."""
    info = client.scheduler_info(n_workers=-1)
    return [WorkerInfo(address, int(w.get("nthreads", 0)),
                       tuple(sorted((str(k), float(v))
                                    for k, v in (w.get("resources") or {}).items())))
            for address, w in sorted(info.get("workers", {}).items())]


def describe(error: BaseException) -> str:
    """An exception as a few words for a one-line message: its type and first line."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


# -- secrets ---------------------------------------------------------------------------------------


class SecretDesk:
    """A listener in the client's event loop that gives each action's secrets to its worker."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._values: dict[str, tuple[tuple[str, str], ...]] = {}
        self._lock = threading.Lock()
        self._listener: Any = None
        self.address = ""

    def open(self, values: tuple[tuple[str, str], ...]) -> str:
        """Hold `values` under a new token until `close(token)`; the listener starts on first
        use."""
        with self._lock:
            if self._listener is None:
                self._client.sync(self._start)
            token = tokens.token_urlsafe(24)
            self._values[token] = values
        return token

    def close(self, token: str) -> None:
        """Forget the values held under `token` (the action ended)."""
        with self._lock:
            self._values.pop(token, None)

    async def _start(self) -> None:
        from distributed.comm import get_address_host, listen, parse_address

        # the interface that reaches the cluster
        local = self._client.scheduler_comm.comm.local_address
        listener = listen(f"{parse_address(local)[0]}://{get_address_host(local)}:0", self._handle,
                          **self._client.security.get_listen_args("client"))
        await listener.start()
        self._listener, self.address = listener, listener.contact_address

    async def _handle(self, comm: Any) -> None:
        try:
            message = await comm.read()
            with self._lock:
                values = self._values.get(message.get("token", "")) \
                    if isinstance(message, dict) else None
            await comm.write({"env": None if values is None else [list(pair) for pair in values]})
        except Exception:  # a broken or foreign connection gets nothing
            pass
        finally:
            await comm.close()

    def stop(self) -> None:
        """Stop listening (the build is over)."""
        if self._listener is not None:
            try:
                self._listener.stop()
            except Exception:
                pass


def fetch_secrets(worker: Any, desk: str, token: str) -> tuple[tuple[str, str], ...]:
    """On a worker: ask the client's desk for one action's secret values (see above)."""
    from distributed.comm import connect as comm_connect
    from distributed.utils import sync

    async def fetch() -> Any:
        comm = await comm_connect(desk, **worker.connection_args)
        try:
            await comm.write({"token": token})
            return await comm.read()
        finally:
            await comm.close()

    reply = sync(worker.loop, fetch)
    if not isinstance(reply, dict) or reply.get("env") is None:
        raise RuntimeError(
            "the client no longer holds this action's secrets (the action was cancelled)")
    return tuple((str(name), str(value)) for name, value in reply["env"])
