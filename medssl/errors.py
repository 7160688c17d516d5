"""The one exception a user is meant to see: its message names the file or value and the fix."""


class MedsslError(Exception):
    """A problem with the user's input (data, flags, files). The CLI prints it without a traceback."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM during training; the message says what was saved and how to continue. Exit 130."""
