"""Error types shared by every part of seamline.

Every error carries a stable ``code`` (a dotted lowercase string such as
``format.json.depth`` or ``sink.http.status``) and says whether retrying can
help (``retryable``). The runtime uses ``retryable`` to choose between a
scheduled retry and the dead-letter queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "FatalError",
    "RetryableError",
    "SeamlineError",
    "classify",
]


class SeamlineError(Exception):
    """Base of all seamline errors: a message, a stable code and a retry verdict."""

    code: str = "seamline.error"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retryable: bool | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class FatalError(SeamlineError):
    """Retrying cannot help (bad data, mapping error, 4xx): dead-letter at once."""

    code = "fatal"
    retryable = False


class RetryableError(SeamlineError):
    """A transient failure (timeout, connection refused, 5xx): retry with backoff."""

    code = "retryable"
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)
        #: seconds the remote side asked us to wait (``Retry-After``), if any
        self.retry_after = retry_after


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a flow file, with where it is and what to do."""

    message: str
    file: str | None = None
    line: int | None = None
    col: int | None = None
    flow: str | None = None
    step: str | None = None
    kind: str | None = None
    field: str | None = None
    hint: str | None = None
    code: str = "config.invalid"
    #: what ``step`` names: a step or a sink
    part: str = "step"

    def render(self) -> str:
        where = ""
        if self.file:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.col is not None:
                    where += f":{self.col}"
            where += ": "
        what = ""
        if self.step is not None:
            what = f"{self.part} '{self.step}'" + (f" ({self.kind})" if self.kind else "") + ": "
        elif self.kind is not None:
            what = f"{self.kind}: "
        text = f"{where}{what}{self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


@dataclass
class ConfigError(SeamlineError):
    """A flow file (or Python-built flow) is invalid; carries every issue found."""

    issues: list[ConfigIssue] = field(default_factory=list)

    def __init__(self, issues: list[ConfigIssue] | ConfigIssue) -> None:
        if isinstance(issues, ConfigIssue):
            issues = [issues]
        self.issues = list(issues)
        super().__init__(
            "\n".join(i.render() for i in self.issues),
            code=self.issues[0].code if self.issues else "config.invalid",
        )

    def __str__(self) -> str:
        return self.message


_RETRYABLE_BUILTINS: tuple[type[BaseException], ...] = (
    TimeoutError,
    ConnectionError,
)


def classify(exc: BaseException) -> bool:
    """Return True when ``exc`` is worth retrying.

    seamline errors say so themselves; timeouts and connection errors are
    retryable; anything else (a bug, bad data) is fatal.
    """
    if isinstance(exc, SeamlineError):
        return exc.retryable
    if isinstance(exc, _RETRYABLE_BUILTINS):
        return True
    return isinstance(exc, OSError) and exc.errno in {104, 110, 111, 113}  # reset/timeout/refused/unreach
