"""Secret values for tests of redaction."""

from __future__ import annotations

import secrets

__all__ = ["fresh_secret"]


def fresh_secret() -> str:
    """A value no other test uses: the daemon's registry lives as long as the process."""
    return "s3cr3t-" + secrets.token_hex(8)
