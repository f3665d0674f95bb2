"""The fixed vocabulary of reasons a source file is not kept.

Reports, the `rejected/` table and the Lambda handler's 4xx messages all use these
strings, so they are part of the product's interface: add, never rename.
"""

from enum import StrEnum


class Reason(StrEnum):
    # Reading the source object
    EMPTY = "empty"
    FILE_TOO_LARGE = "file_too_large"
    READ_ERROR = "read_error"
    SOURCE_CHANGED = "source_changed"
    NO_CLASS = "no_class"
    # Decoding
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TRUNCATED = "truncated"
    UNDECODABLE = "undecodable"
    DECOMPRESSION_BOMB = "decompression_bomb"
    TOO_SMALL = "too_small"
    # A native decoder died or hung on this file (it runs isolated, so the job goes on).
    DECODER_CRASH = "decoder_crash"
    # Anything the code did not foresee: the file is still accounted for.
    INTERNAL_ERROR = "internal_error"
    # A person decided (the run's --overrides file): dropped whatever the rules say.
    OVERRIDE = "override"
    # A photo whose content sits with another class, or with none (`pipeline.offclass`).
    OFF_CLASS = "off_class"


class Rejected(Exception):
    """A file that cannot be kept, with the reason a person will read in the report."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason
        self.detail = detail
