"""Python client for the MedGemma RunPod worker: library API and ``python -m client`` CLI."""

from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    ConfigurationError,
    DeadlineExceededError,
    IncompleteResultError,
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
from .inputs import chat_message
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
    "IncompleteResultError",
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
    "chat_message",
]
