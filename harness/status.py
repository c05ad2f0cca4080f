"""The status vocabularies, one per level, as string enums (members compare equal to, and are
written to JSON as, their plain strings, so files and tables keep their values).

    RunStatus     a host run, in result.json (docs/host-protocol.md)
    RunOutcome    a coupled run as the study tables see it: a RunStatus, or why there is none
    TaskState     a study task, from its marker file
    ErrorReason   why a task's marker says 'error' (all of them are retried by --resume)
    TaskProgress  a study task as `harness status` counts it: its marker and the Slurm queue
    TrainStatus   a candidate's training (train.json)
    ConvertStatus a candidate's conversion and verification (convert.json)
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["RunStatus", "RunOutcome", "TaskState", "ErrorReason", "TaskProgress", "TrainStatus",
           "ConvertStatus"]


class RunStatus(StrEnum):
    COMPLETED = "completed"    #: every step ran
    FAILED = "failed"          #: a failure criterion fired (a result, not an error)
    ERROR = "error"            #: the run could not start or could not go on


class RunOutcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    ERROR = "error"            #: the task or the host run reported an error
    SKIPPED = "skipped"        #: nothing to run (no converted model, too few members)
    MISSING = "missing"        #: not run yet


class TaskState(StrEnum):
    OK = "ok"                  #: finished; a rerun skips it
    ERROR = "error"            #: failed; a rerun retries it
    WAITING = "waiting"        #: an upstream task is not finished
    PENDING = "pending"        #: not started


class ErrorReason(StrEnum):
    """Infrastructure failures: none of them is a result of the task, so --resume reruns it."""
    EXCEPTION = "exception"    #: the task raised (message and traceback in the marker)
    TERMINATED = "terminated"  #: SIGTERM: scancel, a requeue, or Slurm ending the job
    TIME_LIMIT = "time_limit"  #: stopped at the time limit (after the USR1 requeues)
    NODE_FAIL = "node_fail"    #: its node failed (or did not boot) while it ran
    OUT_OF_MEMORY = "out_of_memory"  #: killed by the job's memory limit
    PREEMPTED = "preempted"    #: the scheduler took the node for another job


class TaskProgress(StrEnum):
    """Exactly one per task, so a stage's counts add up to its task count."""
    DONE = "done"              #: marker 'ok'
    RUNNING = "running"        #: a live job (or local process) is running it now
    PENDING = "pending"        #: queued, or not submitted (--resume submits it)
    WAITING = "waiting"        #: ran before an earlier task it needs had finished
    ERROR = "error"            #: failed and not queued again (--resume retries it)


class TrainStatus(StrEnum):
    OK = "ok"
    DIVERGED = "diverged"      #: the loss or the validation predictions went non-finite
    ERROR = "error"            #: the training task failed
    MISSING = "missing"        #: not trained yet


class ConvertStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"                #: the converter refused the model (its message is kept)
    VERIFY_FAILED = "verify_failed"  #: converted, but the Fortran model disagrees with Keras
    SKIPPED = "skipped"              #: no trained model to convert
    MISSING = "missing"              #: not converted yet
