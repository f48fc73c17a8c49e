"""One exception type for every user-facing failure.

Entry points catch `MetaSymError` and print its message as a single line, so the
message must name the offending argument/file and what was expected.
"""


class MetaSymError(ValueError):
    """A bad input or an unusable file, explained in one line."""
