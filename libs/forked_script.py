"""A command line ``python script.py ...`` run as ``__main__`` in a forked child of this process: the same script
without the seconds of imports a fresh interpreter pays on a 2-core machine (torch, diffusers, transformers), for
the tests and for the GPU check's smoke mode on a CPU. What differs from a fresh interpreter is what is already
imported; a caller resets the library state its scripts would otherwise find changed (``setup``). Not for CUDA,
which does not survive a fork."""
import logging
import os
import runpy
import signal
import sys
import tempfile
import time
import traceback

from libs.cli import own_progress_lock


def wait_for(pid: int, timeout: float, group: bool = False):
    """The exit status of child ``pid`` (minus the signal that killed it), or None when it was still running after
    ``timeout`` seconds and was killed (its whole process group with ``group``)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    (os.killpg if group else os.kill)(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def run_forked(argv: list, cwd: str = None, env: dict = None, timeout: float = 600.0, setup=None,
               own_group: bool = False, running: set = None) -> tuple:
    """(exit status, or None when it ran past ``timeout`` and was killed; stdout; stderr) of ``python *argv`` run
    as ``__main__`` in a forked child, from ``cwd``, with ``env`` as its whole environment (default: this one).

    ``setup()`` runs in the child before the script. ``own_group``: the child leads a process group of its own, with
    the default SIGTERM / SIGINT handlers, and a timeout kills the group (the script's own children with it).
    ``running``: a set that holds the child's pid while it runs (for a caller that ends its children on a signal).
    The script's SystemExit ends the child as it ends an interpreter: None is 0, an int the status, anything else
    goes to stderr with status 1."""
    script = os.path.abspath(os.path.join(cwd or os.getcwd(), argv[0]))
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                own_progress_lock()
                if own_group:
                    os.setpgid(0, 0)
                    for signum in (signal.SIGTERM, signal.SIGINT):
                        signal.signal(signum, signal.SIG_DFL)
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = open(1, 'w', encoding='utf-8', closefd=False)
                sys.stderr = open(2, 'w', encoding='utf-8', errors='backslashreplace', closefd=False, buffering=1)
                if env is not None:
                    os.environ.clear()
                    os.environ.update(env)
                if cwd is not None:
                    os.chdir(cwd)
                if 'torch' in sys.modules:
                    sys.modules['torch'].set_num_threads(1)  # the parent's intra-op threads do not survive a fork
                if setup is not None:
                    setup()
                sys.argv = list(argv)
                sys.path.insert(0, os.path.dirname(script))
                runpy.run_path(script, run_name='__main__')
                code = 0
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
            finally:
                try:
                    logging.shutdown()
                    for stream in (sys.stdout, sys.stderr):
                        stream.flush()
                finally:  # never back into the caller, whatever happened
                    os._exit(code)
        if own_group:
            try:
                os.setpgid(pid, pid)  # as the child does: whichever runs first, the group exists before a kill
            except OSError:  # the child has already run its own setpgid, or exited
                pass
        if running is not None:
            running.add(pid)
        try:
            code = wait_for(pid, timeout, group=own_group)
        finally:
            if running is not None:
                running.discard(pid)
        out.seek(0)
        err.seek(0)
        return code, out.read().decode('utf-8', 'replace'), err.read().decode('utf-8', 'replace')
