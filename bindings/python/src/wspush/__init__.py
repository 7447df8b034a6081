"""wspush: Python host binding for the wspush WebSocket push engine (libwspush.so).

Pure ctypes: the package loads the shared library found through ``WSPUSH_LIBRARY`` (a path),
else next to the package, else in ``target/release`` of the Cargo checkout above the package
or the current directory.

Example::

    import wspush

    def on_upgrade(server, request):
        user = TOKENS.get(request.query("token") or "")
        request.accept(user) if user else request.reject(401)

    with wspush.Server("127.0.0.1:8080", on_upgrade=on_upgrade) as server:
        server.publish("alice", "you have mail")   # str -> text, bytes -> binary

Several processes share users through Redis with ``redis_url="redis://host:6379"``; then
``publish_wait`` and ``publish_async`` tell each publish's outcome.
"""

from __future__ import annotations

from ._errors import (
    BindFailedError,
    EngineIOError,
    InCallbackError,
    InvalidAddressError,
    InvalidArgumentError,
    InvalidCloseCodeError,
    InvalidCloseReasonError,
    InvalidStatusError,
    InvalidUserIdError,
    InvalidUtf8Error,
    MessageTooLargeError,
    NotFoundError,
    NullArgumentError,
    PanicError,
    Result,
    StoppedError,
    UnavailableError,
    WspushError,
    result_str,
)
from ._library import LIBRARY_ENV, LibraryNotFoundError
from ._server import (
    CloseCallback,
    DropCallback,
    HttpCallback,
    MessageCallback,
    OpenCallback,
    Payload,
    PublishDoneCallback,
    Published,
    Request,
    Server,
    Stats,
    UpgradeCallback,
    UserId,
)

__version__ = "0.1.0"

MAX_USER_ID_LEN = 255
"""Longest user ID in bytes (the shortest is 1); user IDs never contain a NUL byte."""


def version() -> str:
    """The loaded libwspush's version, e.g. ``"0.1.0"``."""
    from . import _library

    text: bytes = _library.load().wspush_version()
    return text.decode("ascii")


def library_path() -> str:
    """The path of the libwspush shared library this process loaded (loading it if needed)."""
    from . import _library

    return str(_library.load()._name)  # the path CDLL was given


# Public classes report themselves as wspush.X (tracebacks, reprs), not wspush._module.X.
for _public in (
    BindFailedError, EngineIOError, InCallbackError, InvalidAddressError, InvalidArgumentError,
    InvalidCloseCodeError, InvalidCloseReasonError, InvalidStatusError, InvalidUserIdError,
    InvalidUtf8Error, LibraryNotFoundError, MessageTooLargeError, NotFoundError,
    NullArgumentError, PanicError, Published, Request, Result, Server, Stats, StoppedError,
    UnavailableError, WspushError,
):
    _public.__module__ = __name__
del _public

__all__ = [
    "BindFailedError",
    "CloseCallback",
    "DropCallback",
    "EngineIOError",
    "HttpCallback",
    "InCallbackError",
    "InvalidAddressError",
    "InvalidArgumentError",
    "InvalidCloseCodeError",
    "InvalidCloseReasonError",
    "InvalidStatusError",
    "InvalidUserIdError",
    "InvalidUtf8Error",
    "LIBRARY_ENV",
    "LibraryNotFoundError",
    "MAX_USER_ID_LEN",
    "MessageCallback",
    "MessageTooLargeError",
    "NotFoundError",
    "NullArgumentError",
    "OpenCallback",
    "PanicError",
    "Payload",
    "PublishDoneCallback",
    "Published",
    "Request",
    "Result",
    "Server",
    "Stats",
    "StoppedError",
    "UnavailableError",
    "UpgradeCallback",
    "UserId",
    "WspushError",
    "library_path",
    "result_str",
    "version",
]
