"""Writing files so that readers never see a half-written one."""
import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_open(path: str, mode: str = 'wb'):
    """Open a temporary file beside ``path``; when the block succeeds, flush, fsync and rename it to ``path``.

    If the block raises, the temporary file is removed and ``path`` keeps its previous content (or stays absent).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
