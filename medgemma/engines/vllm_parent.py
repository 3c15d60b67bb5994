"""vLLM's executor, run in its engine core process, ending that process when the worker dies.

vLLM 0.32's engine core is a ``multiprocessing`` child of the worker that never checks that its
parent lives: a worker killed with SIGKILL (an OOM kill, a supervisor's timeout) runs no code,
and the engine core and its model runner would keep the model's memory until someone killed
them. A parent-death signal set at fork cannot help: vLLM spawns (fork then exec) its engine core.

So the executor, which vLLM builds inside the engine core process, first starts a thread that
waits on ``multiprocessing``'s parent sentinel (a pipe that only the parent holds open) and,
once the parent is gone, sends this process SIGTERM, vLLM's own shutdown, then SIGKILL if that
has not ended it. Processes that vLLM starts from the engine core watch it through their own
death pipe, so they follow.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading

from vllm.v1.executor.uniproc_executor import UniProcExecutor

log = logging.getLogger(__name__)

#: How long vLLM's own SIGTERM shutdown may take once the worker is gone.
SHUTDOWN_GRACE_S = 10.0


class ParentWatchingExecutor(UniProcExecutor):
    """vLLM's one-process executor (the worker's world size is always 1) that dies with the worker."""

    def _init_executor(self) -> None:
        watch_parent()
        super()._init_executor()


def watch_parent() -> None:
    """End this process when its ``multiprocessing`` parent ends (nothing to watch in the parent itself)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return  # vLLM's engine core runs inside the worker (VLLM_ENABLE_V1_MULTIPROCESSING=0)
    sentinel = parent.sentinel

    def wait_then_exit() -> None:
        multiprocessing.connection.wait([sentinel])
        log.warning("the worker (pid %d) has ended: vLLM's engine core (pid %d) stops", parent.pid, os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait(SHUTDOWN_GRACE_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=wait_then_exit, name="medgemma-parent-watch", daemon=True).start()
