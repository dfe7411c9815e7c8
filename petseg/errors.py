"""The one exception type for errors a user can cause and fix."""


class PetsegError(Exception):
    """A user-fixable problem (missing file, bad geometry, corrupt image, bad weights).

    The message is one line that names the offending file or setting and says how to fix
    it; the command-line interface prints it on stderr and exits non-zero.
    """
