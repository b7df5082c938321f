"""The compiler service's pure core: what a compile job is, when two requests are the same job, its states."""

from cag.compiler.core.jobs import Job, JobError, JobSpec, JobState, new_job

__all__ = ["Job", "JobError", "JobSpec", "JobState", "new_job"]
