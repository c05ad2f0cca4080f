"""The mpi4py task farm: ``mpirun -n N python -m harness farm --study DIR --stages ...``.

Rank 0 goes through the stages in order and hands out each stage's unfinished tasks, one at a
time, to whichever rank is free (the tasks differ a lot in cost: a diverging candidate stops
after an epoch, a stable coupled run goes the whole way); a stage starts when the one before has
finished. Ranks 1..N-1 run the tasks (each keeps its TensorFlow import across tasks); with one
rank, rank 0 runs them itself. Collect and report run on rank 0.
"""

from __future__ import annotations

import sys
from collections import deque
from pathlib import Path
from typing import Sequence

from ..status import TaskState
from .layout import StudyDir
from .tasks import run_task

__all__ = ["farm"]

SERIAL = ("collect", "report")


def farm(root: Path | str, stages: Sequence[str], progress: bool = True) -> int:
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if rank != 0:
        while True:
            work = comm.recv(source=0)
            if work is None:
                return 0
            stage, index = work
            comm.send(run_task(root, stage, index), dest=0)
    sd = StudyDir.open(root)
    idle = deque(range(1, size))
    errors = 0
    try:
        from tqdm import tqdm
        for stage in stages:
            todo = deque(sd.pending(stage))
            if not todo:
                continue
            bar = tqdm(total=len(todo), desc=f"{stage:8s}", disable=not progress,
                       file=sys.stderr, dynamic_ncols=True)
            if size == 1 or stage in SERIAL:
                while todo:
                    marker = run_task(sd.root, stage, todo.popleft(), study=sd)
                    errors += marker.get("status") == TaskState.ERROR
                    bar.update(1)
            else:
                busy = 0
                while todo or busy:
                    while todo and idle:
                        comm.send((stage, todo.popleft()), dest=idle.popleft())
                        busy += 1
                    status = MPI.Status()
                    marker = comm.recv(source=MPI.ANY_SOURCE, status=status)
                    idle.append(status.Get_source())
                    busy -= 1
                    errors += marker.get("status") == TaskState.ERROR
                    if marker.get("status") == TaskState.ERROR:
                        bar.write(f"  {stage} task {marker.get('index')}: "
                                  f"{marker.get('message', '')}")
                    bar.update(1)
            bar.close()
            if stage == "data" and sd.counts("data")["error"]:
                print(f"farm: a truth run failed; stopping (see {sd.root}/tasks/data)",
                      file=sys.stderr)
                return 1
    finally:
        for worker in range(1, size):
            comm.send(None, dest=worker)
    return 0
