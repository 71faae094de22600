"""The Dask dispatcher: local threads, processes, a running scheduler, errors, bounded flight."""

from __future__ import annotations

import os
import threading
import time

import pytest

from wsi_s2lcm.dispatch import ONE_TASK, Dispatcher, available_cpus, open_dispatcher, task_threads
from wsi_s2lcm.segment import _threads_per_worker
from wsi_s2lcm.errors import ConfigError


def square(x: int, offset: int) -> int:
    return x * x + offset


def fail_on_three(x: int) -> int:
    if x == 3:
        raise RuntimeError("three")
    return x


def test_local_threads_return_every_result():
    with open_dispatcher(workers=2) as dispatcher:
        assert dispatcher.client is not None
        results = list(dispatcher.imap(square, range(20), 1))
    assert results == [x * x + 1 for x in range(20)]


def slower_first(x: int) -> int:
    time.sleep(0.05 * (6 - x))
    return x


def test_results_come_in_submission_order_whoever_finishes_first():
    with open_dispatcher(workers=2) as dispatcher:
        assert list(dispatcher.imap(slower_first, range(6))) == list(range(6))


def test_in_thread_mode_needs_no_dask():
    with open_dispatcher(workers=0) as dispatcher:
        assert dispatcher.client is None
        assert list(dispatcher.imap(square, [1, 2], 0)) == [1, 4]


def test_running_scheduler_is_used():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster:
        with open_dispatcher(scheduler=cluster.scheduler_address) as dispatcher:
            assert list(dispatcher.imap(square, range(5), 0)) == [0, 1, 4, 9, 16]
            assert dispatcher.workers is None, "a cluster's machines are not this one"
            assert _threads_per_worker(dispatcher) is None


def test_local_workers_share_this_machines_cores():
    cores = available_cpus()
    assert 1 <= cores <= (os.cpu_count() or 1)
    assert _threads_per_worker(None) == cores
    assert _threads_per_worker(Dispatcher(None, in_flight=1, workers=2)) == max(1, cores // 2)


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:1", "tcp://host:notaport", "bogus://x:1"])
def test_unreachable_or_malformed_scheduler_is_a_config_error(address):
    import dask

    before = dask.config.get("scheduler", None)
    with pytest.raises(ConfigError, match="scheduler"):
        with open_dispatcher(scheduler=address, timeout=2):
            pass
    assert dask.config.get("scheduler", None) == before, "dask's global setting is left alone"


def test_task_errors_reach_the_caller():
    with open_dispatcher(workers=2) as dispatcher:
        with pytest.raises(RuntimeError, match="three"):
            list(dispatcher.imap(fail_on_three, range(6)))


def test_items_are_pulled_lazily():
    pulled = []
    lock = threading.Lock()

    def items():
        for i in range(50):
            with lock:
                pulled.append(i)
            yield i

    dispatcher = Dispatcher(None, in_flight=1)
    iterator = dispatcher.imap(square, items(), 0)
    next(iterator)
    assert len(pulled) == 1
    with open_dispatcher(workers=1) as dispatcher:
        pulled.clear()
        iterator = dispatcher.imap(square, items(), 0)
        next(iterator)
        assert len(pulled) <= dispatcher.in_flight + 1
        iterator.close()  # cancels the tasks in flight while the client is open


@pytest.mark.parametrize("workers", [0, 2])
def test_as_completed_gives_each_result_or_error_and_goes_on(workers):
    with open_dispatcher(workers=workers) as dispatcher:
        outcomes = list(dispatcher.as_completed(fail_on_three, range(6)))
    assert sorted(item for item, _, _ in outcomes) == list(range(6))
    for item, result, error in outcomes:
        if item == 3:
            assert result is None and isinstance(error, RuntimeError) and str(error) == "three"
        else:
            assert result == item and error is None


def test_as_completed_submits_at_most_in_flight_tasks():
    pulled = []

    def items():
        for i in range(30):
            pulled.append(i)
            yield i

    with open_dispatcher(workers=1, in_flight=3) as dispatcher:
        iterator = dispatcher.as_completed(square, items(), 1)
        first = next(iterator)
        assert len(pulled) <= 4
        outcomes = [first, *iterator]
    assert sorted(result for _, result, _ in outcomes) == [x * x + 1 for x in range(30)]


def threads_for_a_task(_: int) -> int | None:
    return task_threads()


def test_a_task_shares_its_workers_cores_unless_it_runs_alone():
    from distributed import Client, LocalCluster

    assert task_threads() is None, "outside a worker"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        assert client.submit(threads_for_a_task, 0).result() == max(1, available_cpus() // 2)
    with LocalCluster(n_workers=1, threads_per_worker=3, processes=False, resources=ONE_TASK,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        assert client.submit(threads_for_a_task, 0, resources=ONE_TASK).result() == 3
