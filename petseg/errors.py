"""The one exception type for errors a user can cause and fix."""


class PetsegError(Exception):
    """A user-fixable problem (missing file, bad geometry, corrupt image, bad weights).

    The message is one line that names the offending file or setting and says how to fix
    it; the command-line interface prints it on stderr and exits non-zero.
    """


def describe_os_error(exc: OSError, reading: bool = False) -> str:
    """One line for an operating-system error on a file: the file, why, and the fix.

    `reading`: the file was being read, so a permission fix only needs read access;
    otherwise (a write, or not known) the fix covers both."""
    import errno
    import os

    where = exc.filename or "a file"
    why = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM):
        access = ("make it readable (chmod a+r, or a+rX for a folder)" if reading else
                  "give this user access (chmod a+r to read, u+w to write, a+rX for a folder)")
        return f"{where}: {why.lower()} for uid {os.getuid()}; {access} or run as its owner"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}: {why.lower()}; free space there or write elsewhere"
    if exc.errno == errno.EROFS:
        return f"{where}: on a read-only file system; mount a writable folder there"
    return f"{where}: {why}; check the file and its folder"
