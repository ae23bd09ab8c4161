"""What counts as a subject id (a Clerk user or organization id)."""

from __future__ import annotations

from service.domain.errors import InvalidArgument

MAX_SUBJECT_BYTES = 255

__all__ = ["MAX_SUBJECT_BYTES", "InvalidArgument", "require_subject", "subject_problem"]


def subject_problem(subject: str) -> str | None:
    """Why `subject` is not acceptable, or None when it is."""
    if not subject:
        return "subject must not be empty"
    if len(subject.encode("utf-8")) > MAX_SUBJECT_BYTES:
        return f"subject must be at most {MAX_SUBJECT_BYTES} bytes"
    if not subject.isprintable() or subject != subject.strip():
        return "subject must be printable characters without surrounding whitespace"
    return None


def require_subject(subject: str) -> str:
    problem = subject_problem(subject)
    if problem is not None:
        raise InvalidArgument(problem)
    return subject
