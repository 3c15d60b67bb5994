"""Every tunable default of the client, named in one place.

Constructor arguments (``RetryPolicy``, ``PollPolicy``, ``timeout``, ``wait_timeout``)
override these per client; nothing else in the package hard-codes a number.
"""

DEFAULT_BASE_URL = "https://api.runpod.ai/v2"

# Environment variable names (also read from a ``.env`` file).
ENV_API_KEY = "RUNPOD_API_KEY"
ENV_ENDPOINT_ID = "RUNPOD_ENDPOINT_ID"
ENV_BASE_URL = "RUNPOD_BASE_URL"

# HTTP timeouts in seconds: (connect, read) on every request.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
# Extra read time on top of the ``wait`` we ask /runsync to hold the request for.
RUNSYNC_READ_MARGIN_S = 15.0
# How long /runsync may hold the request (RunPod accepts 1000..300000 ms, default 90000).
RUNSYNC_WAIT_MS = 90_000
RUNSYNC_MIN_WAIT_MS = 1_000

# Retries: exponential backoff with jitter on connection errors, 408, 429 and 5xx.
MAX_RETRIES = 4
INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
# Fraction of each backoff delay that is randomised (0.25 -> delay * [0.75, 1.0]).
RETRY_JITTER = 0.25
# A server's Retry-After is honoured up to this many seconds.
MAX_RETRY_AFTER_S = 60.0

# Polling /status and /stream: start fast, back off to a ceiling.
POLL_INTERVAL_S = 0.25
MAX_POLL_INTERVAL_S = 3.0
POLL_GROWTH = 1.5

# Overall deadline for waiting on one job (queue time + execution).
WAIT_TIMEOUT_S = 900.0
# Upper bound for a best-effort cancel (Ctrl-C, deadline).
CANCEL_TIMEOUT_S = 10.0

# RunPod's documented request-body limits; checked before sending (hosted only).
MAX_RUN_PAYLOAD_BYTES = 10 * 1024 * 1024
MAX_RUNSYNC_PAYLOAD_BYTES = 20 * 1024 * 1024

# Connection pool size; batch concurrency above this still works but queues.
HTTP_POOL_SIZE = 16

# Longest error text copied from an HTTP error body into an exception message.
MAX_ERROR_MESSAGE_CHARS = 300
# Longest ``error:`` line the CLI prints.
MAX_ERROR_LINE_CHARS = 500

# Batch: documents processed at once (threads; each holds one HTTP request or poll loop).
BATCH_CONCURRENCY = 4
