"""The status vocabularies, one per level, as string enums (members compare equal to, and are
written to JSON as, their plain strings, so files and tables keep their values).

    RunStatus     a host run, in result.json (docs/host-protocol.md)
    RunOutcome    a coupled run as the study tables see it: a RunStatus, or why there is none
    TaskState     a study task, from its marker file
    TrainStatus   a candidate's training (train.json)
    ConvertStatus a candidate's conversion and verification (convert.json)
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["RunStatus", "RunOutcome", "TaskState", "TrainStatus", "ConvertStatus"]


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
