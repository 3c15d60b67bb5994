"""Python client for the MedGemma RunPod worker: library API and ``python -m client`` CLI."""

from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    ConfigurationError,
    DeadlineExceededError,
    InvalidRequestError,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobTimedOutError,
    MedGemmaClientError,
    NotFoundError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    SubmissionUncertainError,
)
from .jobs import Job
from .medgemma_client import MedGemmaClient
from .policies import PollPolicy, RetryPolicy
from .results import JobResult, JobState

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "ConfigurationError",
    "DeadlineExceededError",
    "InvalidRequestError",
    "Job",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobResult",
    "JobState",
    "JobTimedOutError",
    "MedGemmaClient",
    "MedGemmaClientError",
    "NotFoundError",
    "PollPolicy",
    "RateLimitError",
    "ResponseFormatError",
    "RetryPolicy",
    "ServerError",
    "SubmissionUncertainError",
]
