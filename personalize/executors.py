"""Evaluate a batched function over chunks of a batch, serially or with any `concurrent.futures.Executor`.

With a process pool (`local_executor`), the function and the parameter chunks are pickled to the
workers: ``f`` must be picklable (a module-level function, or an instance of a module-level class
holding picklable state), not a lambda or a closure. Thread pools and serial evaluation have no such
requirement.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor

import torch
from tqdm.auto import tqdm

from simulators.stencil import set_threads

BatchFunction = Callable[[torch.Tensor], torch.Tensor]
"""``f(theta[N, P]) -> Tensor[N, ...]``: a log-likelihood, or simulated scans, over a batch of parameters."""


def local_executor(workers: int | None = None) -> Executor | None:
    """A pool of ``workers`` local processes (default: one per CPU), or None (serial) for one worker.

    Each process runs the simulators' kernels on its share of the CPUs (``cpu_count // workers`` threads),
    so that the pool does not oversubscribe the machine.
    """
    cpus = os.cpu_count() or 1
    workers = workers or cpus
    if workers <= 1:
        return None
    return ProcessPoolExecutor(max_workers=workers, initializer=set_threads, initargs=(max(1, cpus // workers),))


def evaluate(
    f: BatchFunction,
    theta: torch.Tensor,
    *,
    executor: Executor | None = None,
    chunk_size: int | None = None,
    progress: str | None = None,
) -> torch.Tensor:
    """``f`` on every row of ``theta`` in chunks of ``chunk_size`` rows, results in the order of the rows
    (a ``Tensor[N]`` for a log-likelihood, ``Tensor[N, ...]`` for a simulator).

    Serial (one call per chunk) when ``executor`` is None. ``chunk_size`` defaults to the whole batch
    when serial and to an even split over ``os.cpu_count()`` chunks with an executor. ``progress``, when
    given, labels a progress bar over the rows.
    """
    n = theta.shape[0]
    if n == 0:
        return theta.new_zeros(0)
    if chunk_size is None:
        chunk_size = n if executor is None else math.ceil(n / (os.cpu_count() or 1))
    chunks = theta.split(chunk_size)
    results = map(f, chunks) if executor is None else executor.map(f, chunks)
    with tqdm(total=n, desc=progress, unit="sim", disable=progress is None, leave=False) as bar:
        gathered = []
        for chunk, result in zip(chunks, results):
            gathered.append(result)
            bar.update(len(chunk))
    return torch.cat(gathered)
