"""Result codes and the exception raised for each."""

from __future__ import annotations

import enum
from typing import Optional

from . import _library


class Result(enum.IntEnum):
    """``wspush_result`` values (include/wspush.h); they never change meaning."""

    OK = 0
    NULL_ARGUMENT = 1
    INVALID_ARGUMENT = 2
    INVALID_UTF8 = 3
    INVALID_ADDRESS = 4
    BIND_FAILED = 5
    INVALID_USER_ID = 6
    INVALID_CLOSE_CODE = 7
    INVALID_CLOSE_REASON = 8
    INVALID_STATUS = 9
    MESSAGE_TOO_LARGE = 10
    NOT_FOUND = 11
    STOPPED = 12
    IO = 13
    IN_CALLBACK = 14
    PANIC = 15
    UNAVAILABLE = 16


def result_str(code: int) -> str:
    """The library's short English description of a result code (``wspush_result_str``)."""
    text = _library.load().wspush_result_str(code)
    return text.decode("utf-8", "replace") if text else "unknown result code"


class WspushError(Exception):
    """A wspush call failed. ``code`` is the ``wspush_result`` value (a :class:`Result` when
    known); the message is the library's ``wspush_result_str`` text, plus context."""

    code: int

    def __init__(self, code: int, detail: Optional[str] = None) -> None:
        try:
            self.code = Result(code)
            name = self.code.name
        except ValueError:
            self.code = code
            name = str(code)
        text = f"{result_str(code)} (WSPUSH_RESULT_{name})"
        if detail:
            text = f"{detail}: {text}"
        super().__init__(text)


class NullArgumentError(WspushError, ValueError):
    """NULL_ARGUMENT: a required argument was missing."""


class InvalidArgumentError(WspushError, ValueError):
    """INVALID_ARGUMENT: a value out of range, or a call not allowed here."""


class InvalidUtf8Error(WspushError, ValueError):
    """INVALID_UTF8: text that must be UTF-8 is not."""


class InvalidAddressError(WspushError, ValueError):
    """INVALID_ADDRESS: the listen address is not "host:port" or does not resolve, or a trusted
    proxy is not an address or CIDR network."""


class BindFailedError(WspushError):
    """BIND_FAILED: the listening socket could not be bound (address in use, permission...)."""


class InvalidUserIdError(WspushError, ValueError):
    """INVALID_USER_ID: a user ID must be 1 to 255 bytes long and contain no NUL byte."""


class InvalidCloseCodeError(WspushError, ValueError):
    """INVALID_CLOSE_CODE: close codes must be 1000-1003, 1007-1014 or 3000-4999."""


class InvalidCloseReasonError(WspushError, ValueError):
    """INVALID_CLOSE_REASON: a close reason must be at most 123 bytes of UTF-8."""


class InvalidStatusError(WspushError, ValueError):
    """INVALID_STATUS: an HTTP status out of range (400-599 to reject, 200-599 to respond)."""


class MessageTooLargeError(WspushError, ValueError):
    """MESSAGE_TOO_LARGE: the payload is larger than max_queue_bytes."""


class NotFoundError(WspushError):
    """NOT_FOUND: no such open connection or pending upgrade (closed, timed out, unknown)."""


class StoppedError(WspushError):
    """STOPPED: the server is stopping, stopped or freed."""


class EngineIOError(WspushError):
    """IO: the engine could not create its threads or pollers."""


class InCallbackError(WspushError):
    """IN_CALLBACK: not allowed inside a callback of this server (``free``), or a call that would
    wait for the thread it runs on (``publish_wait`` inside a ``publish_async`` completion)."""


class PanicError(WspushError):
    """PANIC: a bug in wspush was caught at the C boundary."""


class UnavailableError(WspushError):
    """UNAVAILABLE: Redis (``redis_url``) did not confirm a publish within ``redis_timeout_ms``,
    or is known to be unreachable. The message may still be applied (then it is delivered and
    numbered like any other): retrying may deliver it twice."""


_ERROR_CLASSES: dict[int, type[WspushError]] = {
    Result.NULL_ARGUMENT: NullArgumentError,
    Result.INVALID_ARGUMENT: InvalidArgumentError,
    Result.INVALID_UTF8: InvalidUtf8Error,
    Result.INVALID_ADDRESS: InvalidAddressError,
    Result.BIND_FAILED: BindFailedError,
    Result.INVALID_USER_ID: InvalidUserIdError,
    Result.INVALID_CLOSE_CODE: InvalidCloseCodeError,
    Result.INVALID_CLOSE_REASON: InvalidCloseReasonError,
    Result.INVALID_STATUS: InvalidStatusError,
    Result.MESSAGE_TOO_LARGE: MessageTooLargeError,
    Result.NOT_FOUND: NotFoundError,
    Result.STOPPED: StoppedError,
    Result.IO: EngineIOError,
    Result.IN_CALLBACK: InCallbackError,
    Result.PANIC: PanicError,
    Result.UNAVAILABLE: UnavailableError,
}


def error_for(code: int, detail: Optional[str] = None) -> WspushError:
    """The exception for a non-OK result code: the matching subclass of :class:`WspushError`."""
    return _ERROR_CLASSES.get(code, WspushError)(code, detail)
