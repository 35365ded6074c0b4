"""Errors the pack raises on purpose.

Every `ClifError` message names what is wrong (the file, field or value) and what to do about it;
ComfyUI shows it on the node that failed and the CLI prints it without a traceback.
"""


class ClifError(Exception):
    """A problem with the user's input or files, explained in the message."""


class Cancelled(ClifError):
    """The user asked to stop (ComfyUI's cancel button, Ctrl-C in the CLI)."""
