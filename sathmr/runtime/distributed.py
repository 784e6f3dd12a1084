"""Several processes on one job (``torchrun`` / ``accelerate launch``): which process this is, its share of
the work, Python objects gathered from every process, and printing once.

The launcher's environment (``WORLD_SIZE``, ``RANK``, ...) says how many processes there are; accelerate's
``PartialState`` then joins them into one group (gloo on CPU, NCCL with one GPU per process). Without a
launcher nothing is initialised and one process does all the work, so every command runs unchanged.

Work is split by a single rule, the same for images, videos and evaluation samples: the i-th unit of a
listing every process enumerates identically goes to process ``i mod N``. No unit is padded or repeated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import click
from accelerate import PartialState
from accelerate.utils import gather_object

from sathmr.common.errors import SathmrError

T = TypeVar("T")

#: environment variables in which launchers (torchrun/accelerate, MPI) announce the number of processes
WORLD_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_ENV = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def _from_env(names: tuple[str, ...], default: int) -> int:
    return next((int(os.environ[n]) for n in names if os.environ.get(n)), default)


def launched_processes() -> int:
    """The number of processes the launcher started (1 without a launcher)."""
    return _from_env(WORLD_ENV, 1)


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 without a launcher); readable before any group exists."""
    return _from_env(RANK_ENV, 0)


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the job; ``device`` is the one it computes on (its local GPU under CUDA)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, units: Iterable[T], key: Callable[[T], Hashable] | None = None) -> Iterator[T]:
        """This process's share of ``units``: group i goes to process ``i mod world``.

        Each unit is its own group; with ``key``, consecutive units with equal keys form one group (the
        frames of one video stay together). Every process must enumerate the same sequence.
        """
        index, last = -1, None
        for unit in units:
            k = key(unit) if key is not None else None
            if key is None or index < 0 or k != last:
                index += 1
                last = k
            if index % self.world == self.rank:
                yield unit

    def indices(self, n: int) -> Sequence[int]:
        """This process's share of ``range(n)`` (the same rule as :meth:`shard`)."""
        return range(self.rank, n, self.world)

    def gather(self, obj: T) -> list[T]:
        """``obj`` from every process, in rank order, on every process (a barrier too)."""
        if self.world == 1:
            return [obj]
        return gather_object([obj])

    def echo(self, message: str, err: bool = False) -> None:
        """Print on the main process only."""
        if self.is_main:
            click.echo(message, err=err)


def start(device: str = "cpu") -> ProcessGroup:
    """Join the processes a launcher started (one per GPU with ``device="cuda"``), or stay alone.

    Under several processes ``--device cuda`` means "this process's local GPU"; an explicit index would
    put every process on the same GPU and is refused.
    """
    world = launched_processes()
    if world == 1:
        return ProcessGroup(device=device)
    cuda = device.startswith("cuda")
    if cuda and device != "cuda":
        raise SathmrError(f"--device {device} with {world} processes: use --device cuda (each process takes its "
                          "local GPU; choose GPUs with CUDA_VISIBLE_DEVICES)")
    state = PartialState(cpu=not cuda)
    if state.num_processes != world:
        raise SathmrError(f"the launcher started {world} processes but they formed no process group "
                          f"({state.distributed_type}); with --device cuda every process needs a GPU")
    return ProcessGroup(rank=state.process_index, world=state.num_processes, local_rank=state.local_process_index,
                        device=str(state.device) if cuda else "cpu")
