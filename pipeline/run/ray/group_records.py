"""The write stage's group records as the driver receives them, and a worker's failure turned back into the
error it raised."""

from __future__ import annotations

import re
from collections.abc import Iterator

from ray.data import Dataset
from ray.exceptions import RayError

from pipeline import errors
from pipeline.errors import EngineError, PipelineError
from pipeline.records import GroupRecord
from pipeline.run.ray.engines import Engines
from pipeline.run.ray.reserve import EngineReserve
from pipeline.run.ray.stages import RECORD


def iter_records(dataset: Dataset, engines: Engines | None = None) -> Iterator[GroupRecord]:
    """The write stage's group records; a worker's failure surfaces as the PipelineError it raised, the engines'
    end (fewer than run.min_engines left) as what the first failed engine said."""
    reserve = EngineReserve(dataset.context.execution_options, engines) if engines is not None else None
    try:
        if reserve is not None:
            reserve.start()
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            for payload in batch.column(RECORD).to_pylist():
                yield GroupRecord.from_json(payload)
    except RayError as exc:
        raise (engines and engines.failure()) or pipeline_error(exc) from exc
    finally:
        if reserve is not None:
            reserve.stop.set()


def pipeline_error(exc: BaseException) -> PipelineError:
    """The PipelineError a worker raised, through Ray's wrapping: as the exception's cause where Ray keeps it, else
    read back from the remote traceback Ray prints (Ray Data 2.60 re-raises a UDF's error `from None` inside a
    UserCodeException, keeping only its text). Any other failure becomes an EngineError quoting its last line."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, PipelineError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    raised = _raised_in_worker(str(exc))
    if raised is not None:
        return raised
    first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return EngineError(f"a pipeline worker failed after Ray's retries: {first_line}")


_WORKER_ERROR = re.compile(r"^pipeline\.errors\.(\w+): (.+)$", re.MULTILINE)


def _raised_in_worker(traceback_text: str) -> PipelineError | None:
    """The last of our own errors a remote traceback names, rebuilt from its class name and message."""
    for name, message in reversed(_WORKER_ERROR.findall(traceback_text)):
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, PipelineError):
            return cls(message.strip())
    return None
