"""Forked children for tests that need a process to die, or several processes: a real process (it can be killed with
SIGKILL and joins a gloo group) without the seconds of imports a fresh interpreter costs on a 2-core machine."""
import logging
import os
import signal
import socket
import time
import traceback

import torch

from conftest import reset_accelerate
from libs.errors import UserError


def fork(action, log_file: str, env: dict = None) -> int:
    """Run ``action()`` in a forked child whose log goes to ``log_file``; returns its pid. The child exits 0 when
    ``action`` returns, 2 on a UserError (logged as ``error: <message>``), 1 on anything else (traceback logged)."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.environ.update(env or {})
        torch.set_num_threads(1)  # the parent's intra-op threads do not survive a fork
        reset_accelerate()
        logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s',
                            handlers=[logging.FileHandler(log_file)], force=True)
        action()
        code = 0
    except UserError as exc:
        logging.getLogger(__name__).error('error: %s', exc)
        code = 2
    except BaseException:
        logging.getLogger(__name__).error('%s', traceback.format_exc())
    finally:
        logging.shutdown()
        os._exit(code)


def fork_ranks(action, world: int, log_dir) -> list:
    """``world`` forked children that form one process group (gloo; accelerate on the CPU), rank r logging to
    ``log_dir/rank<r>.log``. Returns their pids in rank order."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    pids = []
    for rank in range(world):
        env = dict(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), ACCELERATE_USE_CPU='true')
        pids.append(fork(action, os.path.join(log_dir, f'rank{rank}.log'), env))
    return pids


def wait(pid: int, timeout: float = 120.0) -> int:
    """The child's exit status, or minus the signal that killed it; a child still running after ``timeout`` seconds
    is killed and fails the test."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f'child {pid} still running after {timeout} s')
