"""Fan-out engines: where the workers (vmm.experiments.worker) run, and the loop that feeds them.

- `local` (the default): one single-process `ProcessPoolExecutor` per worker, on this machine.
  One executor per worker, not one pool of N, so that a worker that dies breaks only its own
  executor (a broken pool fails every future in it).
- `ray`: one Ray actor per worker (`ray` is the optional extra `[ray]`). The snapshot reaches
  the actors by its path, which every node must then be able to read (`transfer="path"`), or
  as its files through Ray's object store (`transfer="object-store"`), written by each actor
  into a private directory.

Both are driven by the same loop (`_dispatch`): inputs are read lazily and sent in batches of
`batch_size`, at most PIPELINE batches in flight per worker, so a million-line file never sits
in memory; results are handed back in input order, at most MAX_BUFFERED_BATCHES batches per
worker held for reordering. A worker that dies (its process exits, its actor is killed) is replaced, and
its batches are retried input by input, each alone on a worker, the retried results counting
`attempts`; an input under which MAX_ATTEMPTS workers died ends as stop reason
"worker_lost". A worker crashing on an input alone is so told apart from one that was only in
the same batch.
"""
from __future__ import annotations

import collections
import contextlib
import concurrent.futures as cf
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import weakref
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Protocol

from snapshot.links import close_chain, open_chain, snapshot_paths
from vmm.errors import VmmError
from vmm.experiments.inputs import Input, as_inputs
from vmm.experiments.worker import CRASH_ENV, DEFAULT_BUDGET, WORKER_LOST, Job, Result, Worker

ENGINES = ("local", "ray")
TRANSFERS = ("path", "object-store")
MAX_ATTEMPTS = 3  # runs of one input whose worker died, before it is reported lost
DEFAULT_BATCH = 8  # inputs per task
PIPELINE = 2  # tasks in flight per worker: one running, one waiting, so no worker idles between tasks
MAX_BUFFERED_BATCHES = 64  # per worker: results held for reordering before input reading pauses


class FanoutError(VmmError):
    """A fan-out could not run (engine unavailable, workers could not start)."""


class WorkerLost(Exception):
    """The worker running a batch died."""


class Pool(Protocol):
    """Workers numbered 0..size-1, each running its batches one after the other."""

    size: int

    def submit(self, slot: int, jobs: list[Job]) -> cf.Future[list[Result]]:
        """Run `jobs` on worker `slot`; the future raises WorkerLost if the worker died."""

    def replace(self, slot: int) -> None:
        """Start a new worker in place of the dead one in `slot`."""

    def close(self, finished: bool = True) -> None:
        """Stop the workers: after the last result (`finished`), or at once (an error, Ctrl-C,
        the caller dropped the results), abandoning what they run."""


# --- local ------------------------------------------------------------------------------------
_WORKER: Worker | None = None  # the worker of this process (local engine)


@dataclass(frozen=True)
class _Key:
    """An encrypted snapshot's key on its way to a worker: pickled into the pool's pipe or a Ray
    actor's creation arguments (a 32-byte argument is inlined in the task, not put in the object
    store, so never spilled to disk); its repr never shows it."""

    value: bytes | None = field(default=None, repr=False)


def _init_local(snapshot: str, budget: int, key: _Key) -> None:
    global _WORKER
    _WORKER = Worker(snapshot, budget=budget, key=key.value)


def _run_local(jobs: list[Job]) -> list[Result]:
    assert _WORKER is not None
    return _WORKER.run_batch(jobs)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while worker processes start: they inherit that through exec, so a
    terminal's Ctrl-C reaches only this process, which then stops them (`close`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class LocalPool:
    """Worker processes on this machine (started with `spawn`: a fresh interpreter each, so
    the caller's threads, e.g. a Ray driver's, are not forked)."""

    def __init__(self, snapshot: str, size: int, budget: int, key: _Key = _Key()) -> None:
        self.size = size
        self._args = (snapshot, budget, key)
        self._ctx = multiprocessing.get_context("spawn")
        self._executors = [self._start() for _ in range(size)]
        try:  # a worker that cannot start is an error of the run, not a lost worker
            with _sigint_ignored():
                ready = [ex.submit(os.getpid) for ex in self._executors]
            for f in ready:
                f.result()
        except BrokenProcessPool as e:
            self.close(False)
            raise FanoutError(f"a local worker could not start ({e}); a script that starts a fan-out needs `if __name__ == \"__main__\":`") from None

    def _start(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(1, mp_context=self._ctx, initializer=_init_local, initargs=self._args)

    def submit(self, slot: int, jobs: list[Job]) -> cf.Future[list[Result]]:
        with _sigint_ignored():  # a replacement worker may start here
            future = self._executors[slot].submit(_run_local, jobs)
        return _translated(future, BrokenProcessPool)

    def replace(self, slot: int) -> None:
        self._executors[slot].shutdown(wait=False, cancel_futures=True)
        self._executors[slot] = self._start()

    def close(self, finished: bool = True) -> None:
        for ex in self._executors:
            if not finished:  # a running batch may take long: end the process (ours, by pid)
                for process in list(getattr(ex, "_processes", {}).values()):  # CPython's own table
                    process.terminate()
            ex.shutdown(wait=True, cancel_futures=True)


def _translated(future: cf.Future[Any], lost: type[BaseException] | tuple[type[BaseException], ...]) -> cf.Future[Any]:
    """A future resolving like `future`, with `lost` errors turned into WorkerLost."""
    out: cf.Future[Any] = cf.Future()

    def done(f: cf.Future[Any]) -> None:
        if out.done():  # cancelled: the caller stopped waiting
            return
        try:
            out.set_result(f.result())
        except lost as e:
            out.set_exception(WorkerLost(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
        except BaseException as e:  # noqa: BLE001 - handed to the waiter as is
            out.set_exception(e)

    future.add_done_callback(done)
    return out


# --- ray --------------------------------------------------------------------------------------
def chain_files(snapshot: str | os.PathLike[str], key: bytes | None = None) -> tuple[dict[str, bytes], str]:
    """Every file of the snapshot's chain as {path relative to their common folder: contents},
    and the top state file's relative path: what an actor needs to rebuild the chain. An
    encrypted chain's files travel as they are, encrypted (`key` opens them here)."""
    snap, _ = snapshot_paths(snapshot)
    chain = open_chain(snap, key=key)
    try:
        paths = [p for link in chain for p in (link.pair.paths.state, link.pair.memory_path)]
    finally:
        close_chain(chain)
    paths = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([p.parent for p in paths]))
    return {str(p.relative_to(root)): p.read_bytes() for p in paths}, str(snap.resolve().relative_to(root))


class _RayWorker:
    """The actor class (wrapped with ray.remote in RayPool): a Worker, from a path or from the
    chain's files."""

    def __init__(self, source: str | dict[str, bytes], top: str, budget: int, key: _Key) -> None:
        """`source`: the snapshot's path (then `top` is unused), or the files of `chain_files`
        with `top` the state file among them (still encrypted, if they were: the key travels
        apart, in memory)."""
        path = source
        if isinstance(source, dict):
            folder = tempfile.mkdtemp(prefix="microvm-fanout-")
            weakref.finalize(self, shutil.rmtree, folder, True)  # also at exit
            for rel, data in source.items():
                if Path(rel).is_absolute() or ".." in Path(rel).parts:
                    raise FanoutError(f"snapshot file name {rel!r} leaves its folder")
                target = Path(folder, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            path = str(Path(folder, top))
        self.worker = Worker(path, budget=budget, key=key.value)

    def ready(self) -> int:
        return os.getpid()

    def run_batch(self, jobs: list[Job]) -> list[Result]:
        return self.worker.run_batch(jobs)


class RayPool:
    """One actor per worker, each asking Ray for one CPU."""

    def __init__(self, snapshot: str, size: int, budget: int, transfer: str, key: _Key = _Key()) -> None:
        import ray

        self._ray = ray
        self.size = size
        env = {CRASH_ENV: os.environ[CRASH_ENV]} if CRASH_ENV in os.environ else {}
        self._cls = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0, runtime_env={"env_vars": env} if env else None)(_RayWorker)
        if transfer == "object-store":
            files, top = chain_files(snapshot, key.value)
            self._args: tuple[Any, ...] = (ray.put(files), top, budget, key)
        else:
            self._args = (str(Path(snapshot).resolve()), "", budget, key)
        self._actors = [self._cls.remote(*self._args) for _ in range(size)]
        try:  # a worker that cannot load the snapshot is an error of the run, not a lost worker
            ray.get([a.ready.remote() for a in self._actors])
        except ray.exceptions.RayActorError as e:
            self.close()
            raise FanoutError(f"a Ray worker could not start: {str(e).strip().splitlines()[-1]}") from None

    def submit(self, slot: int, jobs: list[Job]) -> cf.Future[list[Result]]:
        ref = self._actors[slot].run_batch.remote(jobs)
        return _translated(ref.future(), self._ray.exceptions.RayActorError)

    def replace(self, slot: int) -> None:
        self._ray.kill(self._actors[slot])
        self._actors[slot] = self._cls.remote(*self._args)

    def close(self, finished: bool = True) -> None:
        for a in self._actors:
            self._ray.kill(a)


RAY_CONNECT_TIMEOUT_S = 10.0  # seconds to reach a cluster's address before giving up


def _check_reachable(address: str) -> None:
    """Refuse, within RAY_CONNECT_TIMEOUT_S, a "host:port" (or "ray://host:port") nobody
    answers at: ray.init itself retries an unreachable address for minutes. "auto" and
    "local" pass."""
    timeout = RAY_CONNECT_TIMEOUT_S
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local": Ray finds the session itself
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise FanoutError(f"cannot reach Ray at {address}: {e.strerror or e} (waited up to {timeout:g} s)") from None


def _ray_session(address: str | None, workers: int | None) -> tuple[bool, int]:
    """Connect to Ray (`address`, or the running session, or a new local one); (whether this
    call started it, the cluster's CPUs)."""
    try:
        import ray
    except ImportError:
        raise FanoutError("the ray engine needs Ray: pip install -e '.[ray]' in the microvm-harness checkout (it is not on PyPI)") from None
    started = False
    if not ray.is_initialized():
        try:
            if address is not None:
                _check_reachable(address)
                ray.init(address=address, logging_level="WARNING", log_to_driver=False)
            else:
                ray.init(num_cpus=workers, logging_level="WARNING", log_to_driver=False, include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise FanoutError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {e}") from None
        started = True
    return started, int(ray.cluster_resources().get("CPU", 1))


# --- the loop ---------------------------------------------------------------------------------
@dataclass
class _Task:
    jobs: list[Job]
    slot: int
    generation: int  # of the slot's worker when submitted
    alone: bool  # nothing else was in flight on that worker: a death is this task's doing


def _dispatch(pool: Pool, inputs: Iterator[Input], batch_size: int) -> Iterator[Result]:
    """Feed `inputs` to `pool` and yield the results in input order (see the module docstring).

    Up to PIPELINE batches are in flight per worker, so it never waits for the next one. A
    retried input runs alone on its worker (nothing queued with it), so that if the worker dies
    again, that input is the cause."""
    source = enumerate(inputs)
    exhausted = False
    retry: collections.deque[Job] = collections.deque()
    inflight = [0] * pool.size
    generation = [0] * pool.size
    running: dict[cf.Future[list[Result]], _Task] = {}
    done: dict[int, Result] = {}
    next_out = 0
    limit = MAX_BUFFERED_BATCHES * batch_size * pool.size

    def submit(slot: int, jobs: list[Job]) -> None:
        task = _Task(jobs, slot, generation[slot], alone=inflight[slot] == 0 and len(jobs) == 1)
        inflight[slot] += PIPELINE if task.alone else 1  # a lone task keeps its worker to itself
        running[pool.submit(slot, jobs)] = task

    try:
        while True:
            while retry and 0 in inflight:
                submit(inflight.index(0), [retry.popleft()])
            while not retry and not exhausted and len(done) < limit and min(inflight) < PIPELINE:
                jobs = [Job(i, inp) for i, inp in _take(source, batch_size)]
                if not jobs:
                    exhausted = True
                    break
                submit(inflight.index(min(inflight)), jobs)
            if not running:
                break
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                stale = task.generation != generation[task.slot]  # its worker was replaced already
                if not stale:
                    inflight[task.slot] -= PIPELINE if task.alone else 1
                try:
                    for r in future.result():
                        done[r.index] = r
                except WorkerLost as e:
                    if not stale:
                        pool.replace(task.slot)
                        generation[task.slot] += 1
                        inflight[task.slot] = 0
                    for job in task.jobs:
                        if task.alone and job.attempt >= MAX_ATTEMPTS:
                            done[job.index] = Result(
                                job.index, job.input.id, WORKER_LOST, f"the worker died on each of {job.attempt} attempts ({e})", attempts=job.attempt
                            )
                        else:
                            retry.append(replace(job, attempt=job.attempt + 1))
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
    finally:
        for future in running:
            future.cancel()


def _take(source: Iterator[tuple[int, Input]], n: int) -> list[tuple[int, Input]]:
    out = []
    for item in source:
        out.append(item)
        if len(out) == n:
            break
    return out


def iter_experiments(
    snapshot: str | os.PathLike[str],
    inputs: str | os.PathLike[str] | Iterable[Input],
    *,
    engine: Literal["local", "ray"] = "local",
    workers: int | None = None,
    address: str | None = None,
    budget: int = DEFAULT_BUDGET,
    batch_size: int = DEFAULT_BATCH,
    transfer: Literal["path", "object-store"] = "path",
    key: bytes | None = None,
) -> Iterator[Result]:
    """Run every input (a JSON Lines path, read lazily, or Input records) from `snapshot` and
    yield the results in input order. `engine`: "local" (processes on this machine) or "ray"
    (actors on the Ray cluster at `address`, the running session, or a new local one); `workers`:
    how many (default: this machine's CPUs, or the cluster's); `budget`: instructions of virtual
    time for inputs that name none; `transfer` (ray): how the snapshot reaches the actors;
    `key`: an encrypted snapshot's, handed to every worker in memory (never written to disk by
    the harness; each worker decrypts the snapshot into its own private memory).

    The snapshot is opened by this call (not when iteration starts), so a bad one raises
    SnapshotError before any worker starts; a bad input line raises InputError when it is
    reached (vmm.experiments.inputs)."""
    if engine not in ENGINES:
        raise FanoutError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if transfer not in TRANSFERS:
        raise FanoutError(f"transfer must be one of {', '.join(TRANSFERS)}, got {transfer!r}")
    if workers is not None and workers < 1 or batch_size < 1:
        raise FanoutError("workers and batch_size must be at least 1")
    snap = str(snapshot_paths(snapshot)[0])
    Worker(snap, budget=budget, key=key)  # a bad snapshot or key fails here, with its own SnapshotError
    return _run(snap, as_inputs(inputs), engine, workers, address, budget, batch_size, transfer, _Key(key))


def _run(
    snap: str,
    stream: Iterator[Input],
    engine: str,
    workers: int | None,
    address: str | None,
    budget: int,
    batch_size: int,
    transfer: str,
    key: _Key,
) -> Iterator[Result]:
    started = False
    pool: Pool
    if engine == "ray":
        started, cpus = _ray_session(address, workers)
        pool = RayPool(snap, workers or cpus, budget, transfer, key)
    else:
        pool = LocalPool(snap, workers or os.cpu_count() or 1, budget, key)
    finished = False
    try:
        yield from _dispatch(pool, stream, batch_size)
        finished = True
    finally:
        pool.close(finished)
        if started:
            import ray

            ray.shutdown()


def run_experiments(
    snapshot: str | os.PathLike[str],
    inputs: str | os.PathLike[str] | Iterable[Input],
    *,
    engine: Literal["local", "ray"] = "local",
    workers: int | None = None,
    on_result: Callable[[Result], None] | None = None,
    **options: Any,
) -> list[Result]:
    """`iter_experiments` collected into a list, in input order; `on_result` is called with
    each result as it comes."""
    out = []
    for r in iter_experiments(snapshot, inputs, engine=engine, workers=workers, **options):
        if on_result is not None:
            on_result(r)
        out.append(r)
    return out
