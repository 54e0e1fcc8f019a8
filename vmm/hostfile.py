"""Reading a host file the user named (guest image, MMDS data, console input) as untrusted
input: its kind and size are checked with fstat before a byte is read, so a FIFO cannot block,
a device such as /dev/zero cannot stream forever, and a huge (even sparse) file is refused at
once."""
from __future__ import annotations

import os
import stat

from vmm.errors import VmmError


def read_bounded(path: str, *, max_size: int, what: str, why: str, error: type[VmmError] = VmmError) -> bytes:
    """The bytes of `path`, a regular file of at most `max_size` bytes. Otherwise `error`
    (one line: `what` and `path` named, `why` the bound's reason, e.g. "the guest's RAM")."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {path} is not a regular file")
        if st.st_size > max_size:
            raise error(f"{what} {path} is {st.st_size:,} bytes; at most {max_size:,} are accepted ({why})")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(st.st_size + 1)  # one byte more than fstat said: growth is caught
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) != st.st_size:
        raise error(f"{what} {path} changed size while it was read")
    return data
