"""The only module that knows Dask: run tasks on threads, processes or a cluster.

:func:`open_dispatcher` returns a :class:`Dispatcher` on local workers, a running scheduler or
batch jobs (SLURM, PBS, LSF, SGE through dask-jobqueue). Its :meth:`~Dispatcher.imap` submits
tasks with a bounded number in flight (so memory stays flat however many tiles a slide has) and
yields their results in submission order; :meth:`~Dispatcher.as_completed` yields each result or
error as its task ends, for long independent tasks such as the slides of a cohort. ``workers=0``
runs tasks one by one in the calling thread, for debugging and for callers that need no
parallelism.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import logging
import os
from typing import Any, Callable, Iterable, Iterator

from wsi_s2lcm.errors import ConfigError

logger = logging.getLogger(__name__)

#: Batch systems reached through dask-jobqueue: the ``--cluster`` name and its cluster class.
JOBQUEUE_CLUSTERS = {
    "slurm": "dask_jobqueue:SLURMCluster",
    "pbs": "dask_jobqueue:PBSCluster",
    "lsf": "dask_jobqueue:LSFCluster",
    "sge": "dask_jobqueue:SGECluster",
}

#: The Dask resource a batch job's worker processes hold one of, and each task needs: a process
#: runs one task at a time, with its share of the job's cores (dask-jobqueue gives it ``cores /
#: processes`` threads), rather than one task per thread.
ONE_TASK = {"task": 1}


class Dispatcher:
    """Runs ``fn(item, *args)`` for many items in parallel and yields the results in order.

    Parameters
    ----------
    client
        A ``distributed.Client``, or ``None`` to run in the calling thread.
    in_flight
        Most tasks submitted and not yet collected.
    workers
        Tasks that may run at once on this machine (local threads or processes); callers use it
        to share this machine's CPU cores between them. ``None`` for a remote cluster, whose
        machines are not this one: each worker keeps its own threading.
    resources
        Dask resources each task needs (:data:`ONE_TASK` on batch jobs).
    """

    def __init__(
        self,
        client: Any | None,
        in_flight: int,
        workers: int | None = 1,
        resources: dict[str, int] | None = None,
    ) -> None:
        self.client = client
        self.in_flight = max(1, in_flight)
        self.workers = None if workers is None else max(1, workers)
        self.resources = resources

    def _submit(self, fn: Callable[..., Any], item: Any, *args: Any) -> Any:
        return self.client.submit(fn, item, *args, pure=False, resources=self.resources)

    def imap(self, fn: Callable[..., Any], items: Iterable[Any], *args: Any) -> Iterator[Any]:
        """Yield ``fn(item, *args)`` for each item, in the order of ``items``.

        Tasks run in parallel, but results are handed over in submission order (a result that
        finishes early waits for the ones before it, at most ``in_flight`` of them), so what a
        caller builds from them does not depend on which worker was faster. An exception
        raised by a task is raised here, after the other tasks in flight are cancelled.
        """
        if self.client is None:
            for item in items:
                yield fn(item, *args)
            return
        iterator = iter(items)
        pending: collections.deque = collections.deque()
        try:
            for item in iterator:
                pending.append(self._submit(fn, item, *args))
                if len(pending) >= self.in_flight:
                    break
            while pending:
                future = pending.popleft()
                result = future.result()
                future.release()
                for item in iterator:
                    pending.append(self._submit(fn, item, *args))
                    break
                yield result
        finally:
            for future in pending:
                future.cancel()

    def as_completed(
        self, fn: Callable[..., Any], items: Iterable[Any], *args: Any
    ) -> Iterator[tuple[Any, Any, BaseException | None]]:
        """Yield ``(item, fn(item, *args), None)`` for each item as its task ends, in any order.

        A task that raises (or whose worker dies) yields ``(item, None, error)`` and the others
        go on. At most ``in_flight`` tasks are submitted at a time; leaving the loop early
        cancels those still running.
        """
        if self.client is None:
            for item in items:
                try:
                    yield item, fn(item, *args), None
                except Exception as error:
                    yield item, None, error
            return
        from distributed import as_completed

        iterator = iter(items)
        owners: dict[str, Any] = {}

        def submit() -> Any:
            for item in iterator:
                future = self._submit(fn, item, *args)
                owners[future.key] = item
                return future
            return None

        started = [submit() for _ in range(self.in_flight)]
        running = as_completed([future for future in started if future is not None])
        try:
            for future in running:
                item = owners.pop(future.key)
                try:
                    outcome: tuple[Any, Any, BaseException | None] = (item, future.result(), None)
                except Exception as error:
                    outcome = (item, None, error)
                future.release()
                following = submit()
                if following is not None:
                    running.add(following)
                yield outcome
        finally:
            for future in running.futures:
                future.cancel()


@contextlib.contextmanager
def open_dispatcher(
    workers: int = 1,
    scheduler: str | None = None,
    processes: bool = False,
    timeout: float = 20.0,
    cluster: str = "local",
    jobs: int = 1,
    cluster_options: dict[str, Any] | None = None,
    in_flight: int | None = None,
) -> Iterator[Dispatcher]:
    """Start (or connect to) a Dask cluster for the duration of a ``with`` block.

    Parameters
    ----------
    workers
        Local workers: threads (default) or processes. ``0`` runs tasks in the calling thread.
        Ignored with ``scheduler`` or a batch ``cluster``.
    scheduler
        Address of a running ``dask.distributed`` scheduler (``tcp://host:8786``) or the path of
        its scheduler file.
    processes
        Local workers are processes rather than threads.
    timeout
        Seconds to wait for a running scheduler.
    cluster
        ``local``, or a batch system of :data:`JOBQUEUE_CLUSTERS` whose jobs become the
        workers (needs dask-jobqueue).
    jobs
        Batch jobs to submit with a batch ``cluster``.
    cluster_options
        Keyword arguments of the dask-jobqueue cluster (``cores``, ``memory``, ``walltime``,
        ``queue``, ``account``...), over those of dask's ``jobqueue`` configuration.
    in_flight
        Most tasks submitted at a time; twice the worker threads when ``None``.

    Yields
    ------
    Dispatcher
    """
    if workers < 0:
        raise ConfigError(f"--workers {workers} must be 0 or more.")
    if cluster != "local":
        if scheduler is not None:
            raise ConfigError(
                f"--cluster {cluster} starts its own scheduler; leave out --scheduler, or use "
                "--cluster local to connect to a running one."
            )
        with _jobqueue_dispatcher(cluster, jobs, cluster_options or {}, in_flight) as dispatcher:
            yield dispatcher
        return
    if scheduler is None and workers == 0:
        yield Dispatcher(None, in_flight=1)
        return
    import dask
    from distributed import Client, LocalCluster
    from distributed.comm import resolve_address

    with dask.config.set({"distributed.worker.daemon": False}):
        if scheduler is not None:
            try:
                if scheduler.endswith(".json"):
                    client = Client(scheduler_file=scheduler, timeout=timeout)
                else:
                    # A malformed address is refused here, before a Client half-starts and
                    # leaves dask's global scheduler setting behind.
                    resolve_address(scheduler)
                    client = Client(scheduler, timeout=timeout)
            except (OSError, TimeoutError, ValueError) as error:
                raise ConfigError(
                    f"--scheduler {scheduler}: cannot reach the Dask scheduler ({error}); check "
                    "the address and that the scheduler is running."
                ) from None
            local = None
            total = sum(client.nthreads().values()) or 1
        else:
            local = LocalCluster(
                n_workers=workers if processes else 1,
                threads_per_worker=1 if processes else workers,
                processes=processes,
                dashboard_address=None,
                silence_logs=logging.WARNING,
            )
            client = Client(local)
            total = workers
        logger.info("Dask client %s with %d worker thread(s)", client.dashboard_link or client, total)
        try:
            yield Dispatcher(
                client, in_flight=in_flight or 2 * total, workers=None if scheduler else total
            )
        finally:
            client.close()
            if local is not None:
                local.close()


@contextlib.contextmanager
def _jobqueue_dispatcher(
    kind: str, jobs: int, options: dict[str, Any], in_flight: int | None
) -> Iterator[Dispatcher]:
    import dask
    from distributed import Client

    if jobs < 1:
        raise ConfigError(f"--jobs {jobs} must be 1 or more.")
    configured = dask.config.get(f"jobqueue.{kind}.worker-extra-args", default=None) or []
    extra = list(options.get("worker_extra_args") or configured)
    resources = ",".join(f"{name}={count}" for name, count in ONE_TASK.items())
    batch = jobqueue_cluster(
        kind, {**options, "worker_extra_args": [*extra, "--resources", resources]}
    )
    try:
        logger.info("submitting %d %s job(s):\n%s", jobs, kind, batch.job_script())
        batch.scale(jobs=jobs)
        client = Client(batch)
        try:
            yield Dispatcher(
                client, in_flight=in_flight or 2 * jobs, workers=None, resources=ONE_TASK
            )
        finally:
            client.close()
    finally:
        batch.close()


def jobqueue_cluster(kind: str, options: dict[str, Any]) -> Any:
    """A dask-jobqueue cluster for the batch system ``kind``, no job submitted yet.

    Parameters
    ----------
    kind
        A key of :data:`JOBQUEUE_CLUSTERS`.
    options
        The cluster's keyword arguments (``cores``, ``memory``, ``walltime``, ``queue``...);
        those left out come from dask's ``jobqueue`` configuration
        (``~/.config/dask/jobqueue.yaml``).

    Raises
    ------
    ConfigError
        An unknown ``kind``, dask-jobqueue missing, or options it refuses.
    """
    if kind not in JOBQUEUE_CLUSTERS:
        raise ConfigError(
            f"--cluster {kind}: unknown; choose local or one of {', '.join(JOBQUEUE_CLUSTERS)}."
        )
    module_name, class_name = JOBQUEUE_CLUSTERS[kind].split(":")
    try:
        cluster_class = getattr(importlib.import_module(module_name), class_name)
    except ImportError:
        raise ConfigError(
            f"--cluster {kind} needs dask-jobqueue: pip install 'wsi-s2lcm[cluster]'."
        ) from None
    try:
        return cluster_class(**options)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"--cluster {kind}: {error}. Give the job's resources with --cluster-option "
            "KEY=VALUE (cores, memory, walltime, queue, account...) or in dask's jobqueue "
            "configuration (~/.config/dask/jobqueue.yaml)."
        ) from None


def available_cpus() -> int:
    """The CPU cores this process may run on (its affinity, which batch schedulers set)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


def task_threads() -> int | None:
    """The CPU threads a task running in a Dask worker may use; ``None`` outside a worker.

    On a batch job's worker process (which holds :data:`ONE_TASK`) a task runs alone with the
    process's threads; on any other worker, its machine's cores are shared among the tasks its
    threads run at once.
    """
    try:
        from distributed import get_worker

        state = get_worker().state
    except (ImportError, ValueError):
        return None
    if all(state.total_resources.get(name) == count for name, count in ONE_TASK.items()):
        return state.nthreads
    return max(1, available_cpus() // state.nthreads)
