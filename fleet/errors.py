"""One line for an error a user reads: a console line, a ``devices.jsonl`` field, a ``ConfigError``'s tail."""

from __future__ import annotations

__all__ = ["one_line", "reason_line", "RunFailed"]

_LIMIT = 300


def one_line(err: BaseException | str, last_line: bool = False, limit: int = _LIMIT) -> str:
    """``err`` as one line of at most ``limit`` characters.

    An exception reads ``Type: first line of its message``. Text has its whitespace, newlines included,
    collapsed, unless ``last_line`` (a Flower error reason, which ends with the device's exception) or it is
    a traceback: then only its last non-empty line is kept.

    Examples
    --------
    >>> one_line(ValueError("bad value\\n  details"))
    'ValueError: bad value'
    >>> one_line("a  message\\n  on two lines")
    'a message on two lines'
    >>> one_line("Traceback (most recent call last):\\n  File 'x.py'\\nKeyError: 'w'")
    "KeyError: 'w'"
    >>> one_line(RuntimeError())
    'RuntimeError'
    >>> one_line("<class 'ClientAppException'>:<'\\nException occurred. Message: injected crash'>", last_line=True)
    "Exception occurred. Message: injected crash'>"
    """
    if isinstance(err, BaseException):
        text = one_line(str(err).strip().split("\n", 1)[0], limit=limit)
        return f"{type(err).__name__}: {text}" if text else type(err).__name__
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    if last_line or (lines and lines[0].startswith("Traceback")):
        lines = lines[-1:]
    return " ".join(" ".join(lines).split())[:limit]


def reason_line(reason: str | None) -> str:
    """A Flower error reply's reason (a traceback or ``<class ...>:<'...'>``, possibly none) as one line."""
    return one_line(reason or "", last_line=True) or "unknown error"


class RunFailed(RuntimeError):
    """A run that started and then failed; ``str(err)`` is one line (the cause, and where the traceback is)."""
