"""The only module that knows Dask: run tasks on threads, processes or a running cluster.

:func:`open_dispatcher` returns a :class:`Dispatcher` whose :meth:`~Dispatcher.imap` submits
tasks with a bounded number in flight (so memory stays flat however many tiles a slide has) and
yields their results in submission order. ``workers=0`` runs tasks one by one in the calling
thread, for debugging and for callers that need no parallelism.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from typing import Any, Callable, Iterable, Iterator

from wsi_s2lcm.errors import ConfigError

logger = logging.getLogger(__name__)


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
    """

    def __init__(self, client: Any | None, in_flight: int, workers: int | None = 1) -> None:
        self.client = client
        self.in_flight = max(1, in_flight)
        self.workers = None if workers is None else max(1, workers)

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
                pending.append(self.client.submit(fn, item, *args, pure=False))
                if len(pending) >= self.in_flight:
                    break
            while pending:
                future = pending.popleft()
                result = future.result()
                future.release()
                for item in iterator:
                    pending.append(self.client.submit(fn, item, *args, pure=False))
                    break
                yield result
        finally:
            for future in pending:
                future.cancel()


@contextlib.contextmanager
def open_dispatcher(
    workers: int = 1,
    scheduler: str | None = None,
    processes: bool = False,
    timeout: float = 20.0,
) -> Iterator[Dispatcher]:
    """Start (or connect to) a Dask cluster for the duration of a ``with`` block.

    Parameters
    ----------
    workers
        Local workers: threads (default) or processes. ``0`` runs tasks in the calling thread.
        Ignored with ``scheduler``.
    scheduler
        Address of a running ``dask.distributed`` scheduler (``tcp://host:8786``) or the path of
        its scheduler file.
    processes
        Local workers are processes rather than threads.
    timeout
        Seconds to wait for a running scheduler.

    Yields
    ------
    Dispatcher
    """
    if workers < 0:
        raise ConfigError(f"--workers {workers} must be 0 or more.")
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
            cluster = None
            total = sum(client.nthreads().values()) or 1
        else:
            cluster = LocalCluster(
                n_workers=workers if processes else 1,
                threads_per_worker=1 if processes else workers,
                processes=processes,
                dashboard_address=None,
                silence_logs=logging.WARNING,
            )
            client = Client(cluster)
            total = workers
        logger.info("Dask client %s with %d worker thread(s)", client.dashboard_link or client, total)
        try:
            yield Dispatcher(client, in_flight=2 * total, workers=None if scheduler else total)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
