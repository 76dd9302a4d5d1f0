"""The worker's job pipeline (see run.py): a job's stages from queued to published.

    run.py       run_job, JobRun.execute: the list of stages
    lease.py     the lease (heartbeat), cancel and time limit
    progress.py  progress, stage events and timings; RunContext, what every stage works with
    inputs.py    validating, refining_teacher, caching_teacher: teacher, data, student
    evaluate.py  evaluating: the student's metrics
    publish.py   exporting, verifying, quantizing, publishing: one export path, the ModelCard
"""

from kdserve.worker.pipeline.common import LEASE_LOST, STAGES, Cancelled, JobFailed, context, pick_device
from kdserve.worker.pipeline.evaluate import neighbour_overlap
from kdserve.worker.pipeline.publish import single_file_artifacts, verify_stored
from kdserve.worker.pipeline.run import JobRun, run_job

__all__ = ["LEASE_LOST", "STAGES", "Cancelled", "JobFailed", "JobRun", "context", "neighbour_overlap",
           "pick_device", "run_job", "single_file_artifacts", "verify_stored"]
