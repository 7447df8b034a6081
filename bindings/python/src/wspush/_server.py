"""The Python face of a running wspush server: :class:`Server`, :class:`Request`, :class:`Stats`,
:class:`Published`."""

from __future__ import annotations

import ctypes
import itertools
import logging
import math
import os
import threading
import time
import weakref
from ctypes import byref, c_size_t, c_uint16, c_uint64, c_void_p, string_at
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, List, Optional, Tuple, Union

from . import _library
from ._errors import InCallbackError, Result, StoppedError, WspushError, error_for
from ._library import KIND_BINARY, KIND_TEXT, SLOW_CONSUMER_CLOSE, SLOW_CONSUMER_DROP

log = logging.getLogger("wspush")

UserId = Union[str, bytes, bytearray, memoryview]
"""A user ID: 1 to 255 bytes without NUL (else :class:`~wspush.InvalidUserIdError`); ``str`` is
encoded as UTF-8."""
Payload = Union[str, bytes, bytearray, memoryview]
"""A message: ``str`` is sent as a text message (UTF-8), anything bytes-like as binary."""

UpgradeCallback = Callable[["Server", "Request"], None]
"""``on_upgrade(server, request)``: decide with ``request.accept(user)``, ``.reject(status)`` or
``.defer()``; ``request.verified_user`` is the subject of a valid JWT (``jwt_hs256_secret``).
Deciding nothing rejects with 401; raising rejects with 500."""
OpenCallback = Callable[["Server", int, bytes], None]
"""``on_open(server, conn, user)``."""
MessageCallback = Callable[["Server", int, bytes, Union[str, bytes]], None]
"""``on_message(server, conn, user, data)``: ``data`` is ``str`` for text, ``bytes`` for binary."""
CloseCallback = Callable[["Server", int, bytes, int], None]
"""``on_close(server, conn, user, code)``: exactly once per ``on_open``."""
DropCallback = Callable[["Server", int, bytes, int], None]
"""``on_drop(server, conn, user, dropped_bytes)``: with ``slow_consumer="drop"``."""
HttpCallback = Callable[["Server", "Request"], None]
"""``on_http(server, request)``: answer with ``request.respond(...)`` (default: 426)."""
PublishDoneCallback = Callable[[Union["Published", WspushError]], None]
"""``done(outcome)`` of :meth:`Server.publish_async`: a :class:`Published`, or the
:class:`~wspush.WspushError` the publish failed with (:class:`~wspush.UnavailableError`,
:class:`~wspush.StoppedError`)."""

_SLOW_CONSUMER_POLICIES = {"close": SLOW_CONSUMER_CLOSE, "drop": SLOW_CONSUMER_DROP}


def _stopped() -> StoppedError:
    return StoppedError(Result.STOPPED, "this server was freed")


def _user_bytes(user: UserId) -> bytes:
    if type(user) is str:
        return user.encode("utf-8")
    if type(user) is bytes:
        return user
    if isinstance(user, (bytes, bytearray, memoryview)):
        return bytes(user)
    raise TypeError(f"a user ID must be str or bytes, not {type(user).__name__}")


def _secret_bytes(secret: Union[bytes, bytearray, memoryview, str]) -> bytes:
    if isinstance(secret, str):
        return secret.encode("utf-8")
    if isinstance(secret, (bytes, bytearray, memoryview)):
        return bytes(secret)
    # The message names the type only: a misplaced secret must not end up in a log.
    raise TypeError(f"jwt_hs256_secret must be bytes or str, not {type(secret).__name__}")


def _payload(data: Payload) -> Tuple[bytes, int]:
    if type(data) is str:
        return data.encode("utf-8"), KIND_TEXT
    if type(data) is bytes:
        return data, KIND_BINARY
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), KIND_BINARY
    if isinstance(data, str):
        return str(data).encode("utf-8"), KIND_TEXT
    raise TypeError(f"a message must be str (text) or bytes (binary), not {type(data).__name__}")


_SIZE_MAX = 2 ** (8 * ctypes.sizeof(c_size_t)) - 1
_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1
_MAX_TIMEOUT_MS = 2**32 - 1  # WSPUSH_MAX_TIMEOUT_MS


def _in_range(value: int, low: int, high: int) -> bool:
    # ctypes truncates out-of-range integers silently (65536 + 1000 would become close code
    # 1000), so every integer is range-checked before it is converted.
    return isinstance(value, int) and low <= value <= high


def _conn_id(conn: int) -> int:
    if not _in_range(conn, 0, _U64_MAX):
        raise error_for(Result.NOT_FOUND, f"connection {conn!r}")
    return conn


def _close_code(code: int) -> int:
    if not _in_range(code, 0, 0xFFFF):
        raise error_for(Result.INVALID_CLOSE_CODE, f"close code {code!r}")
    return code


def _http_status(status: int) -> int:
    if not _in_range(status, 0, 0xFFFF):
        raise error_for(Result.INVALID_STATUS, f"status {status!r}")
    return status


def _copy(address: Optional[int], length: int) -> bytes:
    """Copies a borrowed (pointer, length) buffer into Python-owned bytes."""
    return string_at(address, length) if length and address else b""


@dataclass(frozen=True)
class Stats:
    """A snapshot of the server's gauges and counters (``wspush_stats``). ``*_total`` only grow."""

    connections: int
    """Open (upgraded) connections now."""
    handshakes: int
    """Connections accepted but not yet upgraded (including deferred decisions)."""
    users: int
    """Distinct users with at least one open connection."""
    accepted_total: int
    """Sockets accepted."""
    upgrades_total: int
    """Successful upgrades."""
    rejected_total: int
    """Requests answered with an HTTP error (400/403/404/426/431, host rejections, ...)."""
    over_capacity_total: int
    """Sockets answered 503 because max_connections was reached."""
    messages_in_total: int
    """Messages received from clients."""
    messages_out_total: int
    """Messages handed to sockets (one per recipient connection)."""
    bytes_out_total: int
    """Bytes written to sockets, frame headers included."""
    publishes_total: int
    """Calls to publish."""
    broadcasts_total: int
    """Calls to broadcast."""
    dropped_total: int
    """Messages dropped for a slow consumer (policy "drop")."""
    slow_consumer_closes_total: int
    """Connections closed with 1008 for a slow consumer (policy "close")."""
    protocol_errors_total: int
    """Connections closed for a protocol violation (1002, 1007, 1009)."""
    timeouts_total: int
    """Connections closed by the handshake deadline or the idle timeout."""
    pings_total: int
    """Heartbeat pings sent."""
    ip_limited_total: int
    """Sockets answered 429 by a per-address limit (max_connections_per_ip,
    max_handshakes_per_ip_per_sec, max_pending_handshakes_per_ip)."""
    queued_bytes: int
    """Bytes queued for connections that their sockets have not taken yet."""
    partial_input_bytes: int
    """Bytes held for incomplete client frames and messages."""
    message_timeouts_total: int
    """Connections closed with 1008: a started frame or message not completed in time."""
    partial_input_refusals_total: int
    """Connections closed with 1013: the process-wide cap on incomplete input was reached."""
    max_connections: int
    """The connection cap in force: max_connections, lowered to what RLIMIT_NOFILE allows."""
    history_users: int
    """Users with a history stream (``history_max_messages`` > 0)."""
    history_messages: int
    """Messages held in users' histories."""
    history_bytes: int
    """Bytes charged to history: payloads plus bookkeeping (see ``history_max_bytes``)."""
    resumes_total: int
    """wspush.v1 connections that asked to resume (``since=...``)."""
    recoveries_total: int
    """Resumes that recovered: everything after ``since`` was replayed."""
    recovery_failures_total: int
    """Resumes that could not be honoured (other epoch, trimmed, expired, too large): the client
    resets."""
    redis_connected: int
    """1 while this node's Redis connections are all up and logged in (0 without Redis)."""
    redis_subscribed_users: int
    """Users whose Redis channel this node is subscribed to (local users, and for a moment those
    whose last connection closed)."""
    redis_publish_failures_total: int
    """Publishes Redis did not confirm in time (they may still have been applied)."""
    redis_fills_total: int
    """Reads of a user's stream to fill a jump in offsets or catch up after a lost Redis
    connection."""
    redis_resets_total: int
    """Users whose ``wspush.v1`` connections were closed with 1012: history under them was lost."""


@dataclass(frozen=True)
class Published:
    """What :meth:`Server.publish_with_offset`, :meth:`Server.publish_wait` or
    :meth:`Server.publish_async` did."""

    delivered: int
    """Without Redis: connections the message was queued to (0 when the user has none). With
    Redis (``redis_url``, :meth:`Server.publish_wait` and :meth:`Server.publish_async`): the
    number of *nodes* (servers sharing the Redis) holding a connection of the user, each of
    which got the message."""
    offset: Optional[int]
    """The message's offset in the user's history stream (1, 2, 3, ...; from 1 again when the
    stream starts a new epoch); ``None`` when history is off (``history_max_messages`` 0)."""


class _PendingPublishes:
    """The ``done`` functions of :meth:`Server.publish_async` calls whose completion has not run
    yet, by token (the C userdata). The engine calls one C function for all of them
    (``_PUBLISH_DONE``, alive as long as the module), so nothing per call needs to be kept alive
    for C, and a completion that never came would leave only this entry behind."""

    __slots__ = ("lock", "entries", "tokens")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: "dict[int, Tuple[_Handle, PublishDoneCallback]]" = {}
        # Starts at 1: userdata 0 would arrive as None.
        self.tokens = itertools.count(1)

    def add(self, handle: "_Handle", done: PublishDoneCallback) -> int:
        with self.lock:
            token = next(self.tokens)
            self.entries[token] = (handle, done)
        return token

    def take(self, token: int) -> "Optional[Tuple[_Handle, PublishDoneCallback]]":
        with self.lock:
            return self.entries.pop(token, None)

    def __len__(self) -> int:
        with self.lock:
            return len(self.entries)


_pending_publishes = _PendingPublishes()


def _publish_done(userdata: Optional[int], result: int, delivered: int, offset: int) -> None:
    """The ``wspush_publish_done_fn`` of every :meth:`Server.publish_async`: runs the host's
    ``done`` once. Nothing it raises reaches the engine (it is logged)."""
    try:
        entry = _pending_publishes.take(userdata or 0)
        if entry is None:
            log.error("wspush: a publish completion for an unknown token %r (ignored)", userdata)
            return
        handle, done = entry
        outcome: Union[Published, WspushError]
        if result == Result.OK:
            outcome = Published(delivered, offset or None)
        else:
            outcome = error_for(result, "publish_async")
        # Marked as inside a callback of this server: free() there raises InCallbackError (the
        # engine cannot join the thread it runs on), and a finalizer frees from another thread.
        marker = handle.in_callback
        marker.depth = getattr(marker, "depth", 0) + 1
        try:
            done(outcome)
        finally:
            marker.depth -= 1
    except BaseException:
        log.exception("wspush: publish_async done callback raised; the engine carries on")


# One C function pointer for the life of the process: the engine may call it until the last
# completion, and it holds no per-server state.
_PUBLISH_DONE = _library.PUBLISH_DONE(_publish_done)


def _timeout_ms(timeout: Optional[float]) -> int:
    """``publish_wait``'s timeout in seconds as whole milliseconds (rounded up); ``None`` is the
    longest the library takes (Redis's own timeout still caps the wait)."""
    if timeout is None:
        return _MAX_TIMEOUT_MS
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise error_for(Result.INVALID_ARGUMENT, f"timeout={timeout!r} (seconds, >= 0, or None)")
    if math.isinf(timeout):
        return _MAX_TIMEOUT_MS
    return min(math.ceil(timeout * 1000), _MAX_TIMEOUT_MS)


class _StatsSnapshot(ctypes.Structure):
    """``wspush_stats_snapshot``: ``size``, then one uint64 per :class:`Stats` field in order
    (tests/test_library.py checks that order against the library's own table)."""

    _fields_ = [("size", c_size_t)] + [(field.name, c_uint64) for field in fields(Stats)]


class Request:
    """An HTTP request seen by ``on_upgrade`` or ``on_http``.

    It is borrowed from the engine: use it only inside that callback, on the callback's thread
    (any later use raises :class:`~wspush.InvalidArgumentError`). Every value it returns is a
    Python-owned copy. To decide an upgrade elsewhere (a thread pool, an asyncio loop), call
    :meth:`defer` and complete the returned ticket with :meth:`Server.accept_upgrade` or
    :meth:`Server.reject_upgrade`.
    """

    __slots__ = ("_lib", "_ptr", "_thread", "_tickets", "_ticket")

    def __init__(self, lib: ctypes.CDLL, ptr: int, tickets: Optional["_Tickets"] = None) -> None:
        self._lib = lib
        self._ptr: Optional[int] = ptr
        self._thread = threading.get_ident()
        self._tickets = tickets
        # The ticket once it has been handed out (ticket, defer): a decision taken here then
        # withdraws it from the tickets awaiting a decision.
        self._ticket: Optional[int] = None

    def _live(self) -> int:
        ptr = self._ptr
        if ptr is None or threading.get_ident() != self._thread:
            raise error_for(
                Result.INVALID_ARGUMENT,
                "a Request is valid only inside its callback, on its thread; "
                "use defer() and the ticket to decide later",
            )
        return ptr

    def _expire(self) -> None:
        self._ptr = None

    def _text_out(self, function: Any, *args: Any) -> Optional[bytes]:
        value, length = c_void_p(), c_size_t()
        rc = function(self._live(), *args, byref(value), byref(length))
        if rc == Result.NOT_FOUND:
            return None
        if rc:
            raise error_for(rc)
        return _copy(value.value, length.value)

    @property
    def method(self) -> str:
        """The request method, e.g. ``"GET"``."""
        return (self._text_out(self._lib.wspush_request_method) or b"").decode("utf-8", "replace")

    @property
    def path(self) -> str:
        """The path of the request target without the query string, e.g. ``"/ws"``."""
        return (self._text_out(self._lib.wspush_request_path) or b"").decode("utf-8", "replace")

    @property
    def query_string(self) -> str:
        """The raw query string after ``?`` (not percent-decoded); ``""`` when there is none."""
        return (self._text_out(self._lib.wspush_request_query) or b"").decode("utf-8", "replace")

    def query(self, name: str) -> Optional[str]:
        """The first query parameter called ``name``, as sent (not percent-decoded; use
        ``urllib.parse.unquote`` if needed); ``""`` for a parameter without ``=``; ``None`` if
        absent."""
        encoded = name.encode("utf-8")
        value = self._text_out(self._lib.wspush_request_query_param, encoded, len(encoded))
        return None if value is None else value.decode("utf-8", "replace")

    def header_bytes(self, name: str) -> Optional[bytes]:
        """The raw value of the first header called ``name`` (case-insensitive), or ``None``."""
        encoded = name.encode("utf-8")
        return self._text_out(self._lib.wspush_request_header, encoded, len(encoded))

    def header(self, name: str) -> Optional[str]:
        """The value of the first header called ``name`` (case-insensitive), decoded as
        ISO-8859-1 (lossless for any bytes), or ``None``."""
        value = self.header_bytes(name)
        return None if value is None else value.decode("latin-1")

    @property
    def headers(self) -> List[Tuple[str, str]]:
        """Every header as ``(name, value)`` in the order received (values as in :meth:`header`)."""
        ptr = self._live()
        count = c_size_t()
        rc = self._lib.wspush_request_header_count(ptr, byref(count))
        if rc:
            raise error_for(rc)
        result = []
        for index in range(count.value):
            name, name_len, value, value_len = c_void_p(), c_size_t(), c_void_p(), c_size_t()
            rc = self._lib.wspush_request_header_at(
                ptr, index, byref(name), byref(name_len), byref(value), byref(value_len)
            )
            if rc:
                raise error_for(rc)
            result.append(
                (
                    _copy(name.value, name_len.value).decode("latin-1"),
                    _copy(value.value, value_len.value).decode("latin-1"),
                )
            )
        return result

    @property
    def peer(self) -> Optional[str]:
        """The client's address, ``"ip:port"`` (``"[v6]:port"``): the socket's peer or, from a
        trusted load balancer with ``proxy_protocol``, the address its PROXY header gave;
        ``None`` if the socket has none any more."""
        value = self._text_out(self._lib.wspush_request_peer)
        return None if value is None else value.decode("ascii", "replace")

    @property
    def verified_user(self) -> Optional[bytes]:
        """The user ID (``sub`` claim) of the valid JSON Web Token this request carries, taken
        from an ``Authorization: Bearer`` header, else the ``token`` query parameter; ``None``
        without ``jwt_hs256_secret``, without a token, or when the token is invalid (bad
        signature, not HS256, expired, not yet valid, no usable ``sub``)."""
        return self._text_out(self._lib.wspush_request_verified_user)

    @property
    def ticket(self) -> int:
        """This pending upgrade's ticket; once accepted it is the connection's ID."""
        ticket = c_uint64()
        rc = self._lib.wspush_request_ticket(self._live(), byref(ticket))
        if rc:
            raise error_for(rc)
        # Another thread may decide with it before this callback returns.
        self._hand_out(ticket.value)
        return ticket.value

    def _hand_out(self, ticket: int) -> None:
        self._ticket = ticket
        if self._tickets is not None:
            self._tickets.add(ticket)

    def _decided_here(self) -> None:
        if self._ticket is not None and self._tickets is not None:
            self._tickets.take(self._ticket)

    def accept(self, user: UserId) -> None:
        """Accept the connection as ``user`` (1-255 bytes, no NUL). The last decision of the
        callback wins."""
        encoded = _user_bytes(user)
        rc = self._lib.wspush_request_accept(self._live(), encoded, len(encoded))
        if rc:
            raise error_for(rc, f"accept({user!r})")
        self._decided_here()

    def reject(self, status: int = 401) -> None:
        """Refuse with HTTP ``status`` (400-599) and close."""
        rc = self._lib.wspush_request_reject(self._live(), _http_status(status))
        if rc:
            raise error_for(rc, f"reject({status})")
        self._decided_here()

    def defer(self) -> int:
        """Decide later, from any thread, with ``server.accept_upgrade(ticket, user)`` or
        ``server.reject_upgrade(ticket, status)``. Returns the ticket. The handshake timeout
        still applies: a request left undecided is closed when it passes."""
        ticket = c_uint64()
        rc = self._lib.wspush_request_defer(self._live(), byref(ticket))
        if rc:
            raise error_for(rc, "defer()")
        self._hand_out(ticket.value)
        return ticket.value

    def respond(
        self, status: int, body: Union[str, bytes] = b"", content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        """In ``on_http`` only: answer with ``status`` (200-599), ``content_type`` and ``body``
        (``str`` is sent as UTF-8). The connection is closed after the response."""
        data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        kind = content_type.encode("utf-8")
        rc = self._lib.wspush_request_respond(self._live(), _http_status(status), kind, len(kind), data, len(data))
        if rc:
            raise error_for(rc, f"respond({status})")

    def __repr__(self) -> str:
        if self._ptr is None or threading.get_ident() != self._thread:
            return "<wspush.Request (expired)>"
        return f"<wspush.Request {self.method} {self.path} from {self.peer}>"


class _Tickets:
    """Upgrade tickets handed out (``Request.defer``, ``Request.ticket``) and not decided yet.

    The engine answers a decision on a ticket whose connection is live, and a connection that
    was accepted stays live: without this record a second decision would seem to succeed (and
    be ignored). An entry lives at most a handshake timeout, after which the engine has closed
    the connection and answers NOT_FOUND itself, so the record stays small."""

    __slots__ = ("lock", "deadlines", "lifetime")

    def __init__(self, lifetime_s: float) -> None:
        self.lock = threading.Lock()
        # ticket -> monotonic deadline; insertion order is deadline order (one lifetime for all).
        self.deadlines: "dict[int, float]" = {}
        self.lifetime = lifetime_s

    def add(self, ticket: int) -> None:
        now = time.monotonic()
        with self.lock:
            deadlines = self.deadlines
            while deadlines:
                oldest, deadline = next(iter(deadlines.items()))
                if deadline > now:
                    break
                del deadlines[oldest]
            deadlines.setdefault(ticket, now + self.lifetime)

    def take(self, ticket: int) -> Optional[float]:
        """Withdraws ``ticket``; its deadline if it was awaiting a decision, else None."""
        with self.lock:
            deadline = self.deadlines.pop(ticket, None)
        if deadline is not None and deadline <= time.monotonic():
            return None
        return deadline

    def restore(self, ticket: int, deadline: float) -> None:
        with self.lock:
            self.deadlines[ticket] = deadline


class _Handle:
    """The native server pointer and everything that must outlive it (the callbacks). It holds
    no reference to the :class:`Server`, so an abandoned Server can be garbage collected, and
    its finalizer then stops and frees the native server through this object."""

    __slots__ = (
        "lib",
        "ptr",
        "port",
        "released",
        "inflight",
        "keepalive",
        "release_lock",
        "io_threads",
        "in_callback",
        "tickets",
        "pid",
    )

    def __init__(self, lib: ctypes.CDLL, tickets: _Tickets) -> None:
        self.lib = lib
        self.ptr: Optional[c_void_p] = None
        self.port = 0
        self.released = False
        # Calls in progress push an item while they may use `ptr`. list.append/pop are atomic
        # under the GIL, which makes this the cheapest way for free() to know when no thread can
        # still be handing the old pointer to the library. A call registers only after seeing
        # `ptr` set, so once free() has cleared it, the wait covers only calls already inside:
        # threads that keep calling cannot hold it up.
        self.inflight: List[None] = []
        self.keepalive: List[object] = []
        self.release_lock = threading.Lock()
        # Idents of the engine threads that ran our callbacks. Such a thread runs Python only
        # inside a callback, and the engine cannot join it from itself: free() must not run
        # there, not even through a finalizer after the callback dropped the last reference.
        # Cleared once the engine threads have been joined: a new thread may then get the ident
        # of a finished one (glibc reuses a same-sized stack, and the ident is its address).
        self.io_threads: "set[int]" = set()
        # `depth` > 0 while a callback of this server runs on the current thread: unlike an
        # ident, never true on a thread that merely inherited a finished engine thread's ident.
        self.in_callback = threading.local()
        self.tickets = tickets
        # The engine's threads exist only in the process that started it: a fork child's copy
        # of this handle must never reach the library (its join would panic or hang).
        self.pid = os.getpid()

    def on_io_thread(self) -> bool:
        """Whether the calling thread is one of this server's engine I/O threads."""
        return getattr(self.in_callback, "depth", 0) > 0 or threading.get_ident() in self.io_threads

    def stop_engine(self, ptr: c_void_p) -> int:
        """wspush_server_stop; off the engine's threads it returns once they have ended."""
        rc = self.lib.wspush_server_stop(ptr)
        if not rc and not self.on_io_thread():
            self.io_threads.clear()
        return rc

    def release(self) -> None:
        """Stop (gracefully, waiting for the I/O threads), then free the native server once no
        other thread is inside a call with its pointer. Idempotent."""
        if os.getpid() != self.pid:
            # A fork child leaving (its finalizers run at exit): the server is the parent's.
            self.ptr = None
            self.released = True
            return
        if self.on_io_thread():
            # E.g. the Server was garbage collected when a callback dropped the last reference:
            # the engine cannot join its own thread, so start the stop and free elsewhere.
            ptr = self.ptr
            if ptr is not None:
                self.lib.wspush_server_stop(ptr)
            # Not a daemon: interpreter exit waits for the free instead of killing it halfway.
            threading.Thread(target=self.release, name="wspush-free").start()
            return
        with self.release_lock:
            ptr = self.ptr
            if ptr is None:
                self.released = True
                return
            # Stop first while the pointer is still published, so callbacks run during the drain
            # (on_close for every connection) can still use the server (stats, ...).
            self.stop_engine(ptr)
            self.released = True
            self.ptr = None
            while self.inflight:
                time.sleep(0.0005)
            rc = self.lib.wspush_server_free(ptr)
            if rc:
                # The engine still holds our callbacks: keep them (a leak, never a crash).
                log.error("wspush: wspush_server_free failed: %s", error_for(rc))
            else:
                self.keepalive.clear()


class Server:
    """A running wspush server: starts listening in the constructor.

    Callbacks run on the engine's I/O threads (several at once) and get the server as their
    first argument. An exception raised by a callback is logged (logger ``"wspush"``) and
    never reaches the engine; one raised by ``on_upgrade`` rejects that request with 500. A
    callback that blocks stalls the connections of its I/O thread: defer slow auth.

    Lifetime: :meth:`stop` closes every connection with 1001 and waits for ``on_close`` of each;
    :meth:`free` stops and then releases the native server, after which every method raises
    :class:`~wspush.StoppedError`. Using the server as a context manager frees it on exit, and a
    server that is garbage collected is freed too (``on_close`` still runs for each connection
    opened). Note that :meth:`close` closes *one connection*, not the server.

    A server belongs to the process that started it: a ``fork()`` child must not use it (its
    finalizer leaves it alone there). Callbacks run on 8 MiB stacks unless
    ``thread_stack_size`` says otherwise.

    Every method is thread-safe and may be called from inside any callback, except
    :meth:`free` (raises :class:`~wspush.InCallbackError` there: call :meth:`stop`).
    """

    def __init__(
        self,
        listen: str = "127.0.0.1:8080",
        *,
        path: str = "/ws",
        threads: int = 0,
        on_upgrade: Optional[UpgradeCallback] = None,
        on_open: Optional[OpenCallback] = None,
        on_message: Optional[MessageCallback] = None,
        on_close: Optional[CloseCallback] = None,
        on_drop: Optional[DropCallback] = None,
        on_http: Optional[HttpCallback] = None,
        max_connections: Optional[int] = None,
        max_message_size: Optional[int] = None,
        ping_interval_ms: Optional[int] = None,
        idle_timeout_ms: Optional[int] = None,
        handshake_timeout_ms: Optional[int] = None,
        max_queue_bytes: Optional[int] = None,
        slow_consumer: Optional[str] = None,
        allowed_origins: Iterable[str] = (),
        max_header_bytes: Optional[int] = None,
        max_handshakes_per_thread: Optional[int] = None,
        max_connections_per_user: Optional[int] = None,
        drain_timeout_ms: Optional[int] = None,
        close_timeout_ms: Optional[int] = None,
        max_connections_per_ip: Optional[int] = None,
        max_handshakes_per_ip_per_sec: Optional[int] = None,
        jwt_hs256_secret: Optional[Union[bytes, bytearray, memoryview, str]] = None,
        jwt_leeway_ms: Optional[int] = None,
        thread_stack_size: Optional[int] = None,
        proxy_protocol: bool = False,
        trusted_proxies: Iterable[str] = (),
        max_pending_handshakes_per_ip: Optional[int] = None,
        message_timeout_ms: Optional[int] = None,
        max_partial_input_bytes: Optional[int] = None,
        socket_send_buffer: Optional[int] = None,
        socket_recv_buffer: Optional[int] = None,
        history_max_messages: Optional[int] = None,
        history_ttl_ms: Optional[int] = None,
        history_max_bytes: Optional[int] = None,
        redis_url: Optional[str] = None,
        redis_timeout_ms: Optional[int] = None,
    ) -> None:
        """Start a server.

        Args:
            listen: "host:port"; port 0 picks a free port (read it back from :attr:`port`).
            path: the request path that accepts upgrades (others get 404).
            threads: I/O threads, 0 for one per core.
            on_upgrade: authenticates each upgrade. Without it, a request carrying a valid
                JWT (see ``jwt_hs256_secret``) is accepted as the token's ``sub`` and every
                other gets 401 (with a secret, body "invalid token").
            on_open, on_message, on_close, on_drop, on_http: see the ``*Callback`` aliases.
            max_connections: open plus handshaking connections beyond which sockets get 503.
            max_message_size: largest message a client may send (larger closes with 1009).
            ping_interval_ms: a connection silent this long is pinged.
            idle_timeout_ms: a connection silent this long is closed (1006).
            handshake_timeout_ms: accept-to-upgrade deadline, deferred decisions included.
            max_queue_bytes: unsent bytes one connection may queue; also the largest payload.
            slow_consumer: ``"close"`` (1008, default) or ``"drop"`` (``on_drop`` is called).
            allowed_origins: accepted Origin values (others get 403); empty allows any.
            max_header_bytes: largest HTTP request head (larger gets 431).
            max_handshakes_per_thread: handshakes in progress per I/O thread before it pauses
                accepting.
            max_connections_per_user: connections one user may hold (the next gets 429); 0 =
                no limit.
            drain_timeout_ms: how long :meth:`stop` waits for queued data and close handshakes.
            close_timeout_ms: how long a closing connection waits for the peer's close frame.
            max_connections_per_ip: connections (open or handshaking) one client address may
                hold, IPv6 counted per /64; beyond, 429. 0 = no limit (default).
            max_handshakes_per_ip_per_sec: new connections one client address may open per
                second, in bursts of at most that many; beyond, 429. 0 = no limit (default).
            jwt_hs256_secret: turns on built-in JSON Web Token authentication with this HS256
                secret (bytes, or str encoded as UTF-8; at least 32 bytes). The token comes
                from ``Authorization: Bearer`` or the ``token`` query parameter; alg must be
                HS256, ``exp`` is required, ``nbf`` honoured. See ``on_upgrade`` and
                :attr:`Request.verified_user`. Never echoed in error messages.
            jwt_leeway_ms: clock skew allowed when checking ``exp`` and ``nbf`` (default
                30000; 0 allows none).
            thread_stack_size: stack size in bytes of the engine threads the callbacks run on
                (default 8 MiB, as an ordinary thread; at least 64 KiB). Raise it for callbacks
                that recurse deeper (with ``sys.setrecursionlimit``).
            proxy_protocol: behind a load balancer: connections from ``trusted_proxies`` must
                open with a PROXY protocol header, v1 or v2 (HAProxy ``send-proxy``/
                ``send-proxy-v2``, nginx ``proxy_protocol on``, cloud TCP balancers), else they
                get 400. The client address it carries is what the per-address limits count and
                what :attr:`Request.peer` returns. Other sources are served directly; a PROXY
                header from them gets 400. Needs at least one trusted proxy (else
                :class:`~wspush.InvalidArgumentError`). Default off.
            trusted_proxies: sources allowed to send PROXY headers: addresses (``"127.0.0.1"``,
                ``"::1"``) or CIDR networks (``"10.0.0.0/8"``, ``"fd00::/8"``); anything else
                raises :class:`~wspush.InvalidAddressError`.
            max_pending_handshakes_per_ip: handshakes in progress (accepted, not yet upgraded)
                one client address (IPv6: /64) may have; beyond, new sockets from it get 429 at
                once. 0 = no limit (default).
            message_timeout_ms: time a client has to complete a frame or a fragmented message
                once it has started sending it; then the connection is closed with 1008
                (default 5000; must be > 0).
            max_partial_input_bytes: bytes all connections together may hold for incomplete
                frames and messages (default 256 MiB); the connection whose input would pass it
                is closed with 1013 (try again later).
            socket_send_buffer, socket_recv_buffer: SO_SNDBUF and SO_RCVBUF of every
                connection's socket in bytes; 0 or ``None`` (default) keeps the kernel's
                autotuning. Smaller buffers save kernel memory per connection at the cost of
                throughput per connection.
            history_max_messages: per-user history for clients of the ``wspush.v1``
                subprotocol: the last this many messages published to each user are kept and
                numbered (offsets 1, 2, 3, ... per user, see :meth:`publish_with_offset`), and a
                client that reconnects with ``?since=EPOCH:OFFSET`` is sent what it missed.
                0 (default) turns history off.
            history_ttl_ms: how long a message stays in a user's history (default 600000, must
                be > 0; kept in whole seconds, rounded up). A stream whose newest message has
                expired is dropped: the user's next publish starts a new epoch at offset 1.
            history_max_bytes: bytes all users' histories together may take, payloads plus
                bookkeeping (default 64 MiB, must be > 0); past it the least recently published
                users' streams are dropped whole. Does not apply with ``redis_url`` (Redis's
                maxmemory does).
            redis_url: several servers ("nodes", in one or several processes) share users
                through Redis: ``"redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]"``. A publish on any
                node then reaches the user's connections on every node, history (when on) is kept
                in Redis, and :meth:`publish` only queues the message (it returns 0): use
                :meth:`publish_wait` or :meth:`publish_async` to learn the outcome. ``None`` or
                ``""`` (default) is off; a malformed URL raises
                :class:`~wspush.InvalidArgumentError`.
            redis_timeout_ms: how long Redis may take to answer before a publish fails with
                :class:`~wspush.UnavailableError` (the message may still be applied) and the
                connection to Redis is remade (default 2000, at least 10).

        ``None`` keeps the library default (see include/wspush.h ``wspush_config_new``).

        Raises:
            WspushError: a subclass for the failing setting or for the start
                (e.g. :class:`~wspush.BindFailedError`).
            LibraryNotFoundError: libwspush.so could not be found.
        """
        lib = _library.load()
        self._lib = lib
        # Valid handshake_timeout_ms values are checked (and refused) by the library below.
        ticket_lifetime_ms = handshake_timeout_ms if isinstance(handshake_timeout_ms, int) else 10_000
        self._handle = handle = _Handle(lib, _Tickets(max(ticket_lifetime_ms, 0) / 1000))
        self._port = 0
        config = lib.wspush_config_new()
        if not config:
            raise error_for(Result.PANIC, "wspush_config_new")
        try:

            def check(rc: int, what: str) -> None:
                if rc:
                    raise error_for(rc, what)

            def text(setter: Any, value: str, what: str) -> None:
                encoded = value.encode("utf-8")
                check(setter(config, encoded, len(encoded)), what)

            text(lib.wspush_config_set_listen, listen, f"listen={listen!r}")
            text(lib.wspush_config_set_path, path, f"path={path!r}")
            if not _in_range(threads, 0, _SIZE_MAX):
                raise error_for(Result.INVALID_ARGUMENT, f"threads={threads!r}")
            check(lib.wspush_config_set_threads(config, threads), f"threads={threads}")
            for origin in [allowed_origins] if isinstance(allowed_origins, str) else allowed_origins:
                text(lib.wspush_config_add_allowed_origin, origin, f"allowed_origins: {origin!r}")
            # The trusted proxies first: the library refuses proxy_protocol without one.
            for network in [trusted_proxies] if isinstance(trusted_proxies, str) else trusted_proxies:
                text(lib.wspush_config_add_trusted_proxy, network, f"trusted_proxies: {network!r}")
            if not isinstance(proxy_protocol, bool):
                raise error_for(Result.INVALID_ARGUMENT, f"proxy_protocol={proxy_protocol!r} (True or False)")
            if proxy_protocol:
                check(
                    lib.wspush_config_set_proxy_protocol(config, True),
                    "proxy_protocol=True (needs at least one of trusted_proxies)",
                )
            # (name, value, setter, largest value of the C parameter type)
            numeric = [
                ("max_connections", max_connections, lib.wspush_config_set_max_connections, _SIZE_MAX),
                ("max_message_size", max_message_size, lib.wspush_config_set_max_message_size, _SIZE_MAX),
                ("ping_interval_ms", ping_interval_ms, lib.wspush_config_set_ping_interval_ms, _U64_MAX),
                ("idle_timeout_ms", idle_timeout_ms, lib.wspush_config_set_idle_timeout_ms, _U64_MAX),
                ("handshake_timeout_ms", handshake_timeout_ms, lib.wspush_config_set_handshake_timeout_ms, _U64_MAX),
                ("max_queue_bytes", max_queue_bytes, lib.wspush_config_set_max_queue_bytes, _SIZE_MAX),
                ("max_header_bytes", max_header_bytes, lib.wspush_config_set_max_header_bytes, _SIZE_MAX),
                (
                    "max_handshakes_per_thread",
                    max_handshakes_per_thread,
                    lib.wspush_config_set_max_handshakes_per_thread,
                    _SIZE_MAX,
                ),
                (
                    "max_connections_per_user",
                    max_connections_per_user,
                    lib.wspush_config_set_max_connections_per_user,
                    _SIZE_MAX,
                ),
                ("drain_timeout_ms", drain_timeout_ms, lib.wspush_config_set_drain_timeout_ms, _U64_MAX),
                ("close_timeout_ms", close_timeout_ms, lib.wspush_config_set_close_timeout_ms, _U64_MAX),
                (
                    "max_connections_per_ip",
                    max_connections_per_ip,
                    lib.wspush_config_set_max_connections_per_ip,
                    _SIZE_MAX,
                ),
                (
                    "max_handshakes_per_ip_per_sec",
                    max_handshakes_per_ip_per_sec,
                    lib.wspush_config_set_max_handshakes_per_ip_per_sec,
                    _U32_MAX,
                ),
                ("jwt_leeway_ms", jwt_leeway_ms, lib.wspush_config_set_jwt_leeway_ms, _U64_MAX),
                ("thread_stack_size", thread_stack_size, lib.wspush_config_set_thread_stack_size, _SIZE_MAX),
                (
                    "max_pending_handshakes_per_ip",
                    max_pending_handshakes_per_ip,
                    lib.wspush_config_set_max_pending_handshakes_per_ip,
                    _SIZE_MAX,
                ),
                ("message_timeout_ms", message_timeout_ms, lib.wspush_config_set_message_timeout_ms, _U64_MAX),
                (
                    "max_partial_input_bytes",
                    max_partial_input_bytes,
                    lib.wspush_config_set_max_partial_input_bytes,
                    _SIZE_MAX,
                ),
                (
                    "history_max_messages",
                    history_max_messages,
                    lib.wspush_config_set_history_max_messages,
                    _SIZE_MAX,
                ),
                ("history_ttl_ms", history_ttl_ms, lib.wspush_config_set_history_ttl_ms, _U64_MAX),
                ("history_max_bytes", history_max_bytes, lib.wspush_config_set_history_max_bytes, _SIZE_MAX),
                ("redis_timeout_ms", redis_timeout_ms, lib.wspush_config_set_redis_timeout_ms, _U64_MAX),
            ]
            for name, value, setter, largest in numeric:
                if value is None:
                    continue
                if not _in_range(value, 0, largest):
                    raise error_for(Result.INVALID_ARGUMENT, f"{name}={value!r} (an int from 0 to {largest})")
                check(setter(config, value), f"{name}={value!r}")
            if socket_send_buffer is not None or socket_recv_buffer is not None:
                # One C call sets both; an omitted one stays 0, the kernel's autotuning.
                buffers = {"socket_send_buffer": socket_send_buffer, "socket_recv_buffer": socket_recv_buffer}
                for name, value in buffers.items():
                    if value is not None and not _in_range(value, 0, _SIZE_MAX):
                        raise error_for(Result.INVALID_ARGUMENT, f"{name}={value!r} (an int from 0 to {_SIZE_MAX})")
                check(
                    lib.wspush_config_set_socket_buffers(config, socket_send_buffer or 0, socket_recv_buffer or 0),
                    f"socket_send_buffer={socket_send_buffer!r}, socket_recv_buffer={socket_recv_buffer!r}",
                )
            if redis_url is not None:
                if not isinstance(redis_url, str):
                    raise TypeError(f"redis_url must be str, not {type(redis_url).__name__}")
                encoded_url = redis_url.encode("utf-8")
                # The detail leaves the URL out: it may carry a password.
                check(
                    lib.wspush_config_set_redis_url(config, encoded_url, len(encoded_url)),
                    "redis_url (expected redis://[[USER]:PASSWORD@]HOST[:PORT][/DB])",
                )
            if jwt_hs256_secret is not None:
                secret = _secret_bytes(jwt_hs256_secret)
                # The detail names the setting and the length, never the secret itself.
                check(
                    lib.wspush_config_set_jwt_hs256_secret(config, secret, len(secret)),
                    f"jwt_hs256_secret ({len(secret)} bytes; at least 32 required)",
                )
            if slow_consumer is not None:
                if slow_consumer not in _SLOW_CONSUMER_POLICIES:
                    raise error_for(Result.INVALID_ARGUMENT, f"slow_consumer={slow_consumer!r} ('close' or 'drop')")
                check(
                    lib.wspush_config_set_slow_consumer_policy(config, _SLOW_CONSUMER_POLICIES[slow_consumer]),
                    f"slow_consumer={slow_consumer!r}",
                )
            callbacks = self._make_callbacks(on_upgrade, on_open, on_message, on_close, on_drop, on_http)
            check(lib.wspush_config_set_callbacks(config, byref(callbacks)), "callbacks")
            started = c_void_p()
            rc = lib.wspush_server_start(config, byref(started))
            if rc:
                handle.ptr = None
                handle.released = True
                raise error_for(rc, f"start on {listen}")
            handle.ptr = started
        finally:
            lib.wspush_config_free(config)
        port = c_uint16()
        if lib.wspush_server_local_port(started, byref(port)) == Result.OK:
            self._port = handle.port = port.value
        self._finalizer = weakref.finalize(self, handle.release)

    def _make_callbacks(
        self,
        on_upgrade: Optional[UpgradeCallback],
        on_open: Optional[OpenCallback],
        on_message: Optional[MessageCallback],
        on_close: Optional[CloseCallback],
        on_drop: Optional[DropCallback],
        on_http: Optional[HttpCallback],
    ) -> _library.Callbacks:
        """Builds the C callback table. Each trampoline copies the borrowed data, calls the user
        function, and logs whatever it raises; only callbacks given are registered, so the
        engine never takes the GIL for events nobody listens to."""
        lib = self._lib
        handle = self._handle
        server_ref = weakref.ref(self)
        get_ident = threading.get_ident
        io_threads = handle.io_threads
        marker = handle.in_callback
        tickets = handle.tickets

        def enter(engine_ptr: Optional[int]) -> None:
            # Callbacks may run before wspush_server_start has returned: publish the pointer the
            # engine hands us (it is the same one start returns) so the server is usable there.
            if handle.ptr is None and not handle.released and engine_ptr:
                handle.ptr = c_void_p(engine_ptr)
            io_threads.add(get_ident())
            marker.depth = getattr(marker, "depth", 0) + 1

        def leave() -> None:
            marker.depth -= 1

        def detached() -> Server:
            # The Server was garbage collected and its finalizer is stopping the engine: the
            # connection callbacks still owe on_close (once per on_open), so they get a Server
            # on the same native handle, without a finalizer of its own.
            server = Server.__new__(Server)
            server._lib = lib
            server._handle = handle
            server._port = handle.port
            return server

        def request_trampoline(name: str, callback: Callable[["Server", Request], None]) -> Callable[..., None]:
            def trampoline(_userdata: Any, engine_ptr: Optional[int], request_ptr: int) -> None:
                enter(engine_ptr)
                server = server_ref()
                request = Request(lib, request_ptr, tickets)
                try:
                    if server is None:
                        # The Server object is gone (being finalized): let nobody in.
                        if name == "on_upgrade":
                            request.reject(503)
                        return
                    callback(server, request)
                except BaseException:
                    log.exception("wspush: %s callback raised; answering 500", name)
                    try:
                        if name == "on_upgrade":
                            lib.wspush_request_reject(request_ptr, 500)
                        else:
                            body = b"internal error\n"
                            kind = b"text/plain"
                            lib.wspush_request_respond(request_ptr, 500, kind, len(kind), body, len(body))
                    except BaseException:
                        log.exception("wspush: could not answer 500")
                finally:
                    request._expire()
                    # Dropped while still marked: if this was the last reference, the finalizer
                    # runs here and must see that it is on an engine thread.
                    server = None
                    leave()

            return trampoline

        def deliver(name: str, engine_ptr: Optional[int], conn: int, call: Callable[[Server], None]) -> None:
            """Runs a connection callback for the live Server; an exception is logged, never raised
            into the engine."""
            enter(engine_ptr)
            server = server_ref()
            try:
                call(detached() if server is None else server)
            except BaseException:
                log.exception("wspush: %s callback raised (conn %d); the engine carries on", name, conn)
            finally:
                server = None  # as in request_trampoline
                leave()

        def open_trampoline(_userdata: Any, engine_ptr: Optional[int], conn: int, user: int, user_len: int) -> None:
            deliver("on_open", engine_ptr, conn, lambda server: on_open(server, conn, _copy(user, user_len)))  # type: ignore[misc]

        def message_trampoline(
            _userdata: Any,
            engine_ptr: Optional[int],
            conn: int,
            user: int,
            user_len: int,
            kind: int,
            payload: int,
            payload_len: int,
        ) -> None:
            def call(server: Server) -> None:
                data = _copy(payload, payload_len)
                # The engine validated text as UTF-8, so decoding cannot fail.
                message: Union[str, bytes] = data.decode("utf-8") if kind == KIND_TEXT else data
                on_message(server, conn, _copy(user, user_len), message)  # type: ignore[misc]

            deliver("on_message", engine_ptr, conn, call)

        def close_trampoline(
            _userdata: Any, engine_ptr: Optional[int], conn: int, user: int, user_len: int, code: int
        ) -> None:
            deliver("on_close", engine_ptr, conn, lambda server: on_close(server, conn, _copy(user, user_len), code))  # type: ignore[misc]

        def drop_trampoline(
            _userdata: Any, engine_ptr: Optional[int], conn: int, user: int, user_len: int, dropped: int
        ) -> None:
            deliver("on_drop", engine_ptr, conn, lambda server: on_drop(server, conn, _copy(user, user_len), dropped))  # type: ignore[misc]

        table = _library.Callbacks()
        table.size = ctypes.sizeof(_library.Callbacks)
        if on_upgrade is not None:
            table.on_upgrade = _library.ON_UPGRADE(request_trampoline("on_upgrade", on_upgrade))
        if on_open is not None:
            table.on_open = _library.ON_OPEN(open_trampoline)
        if on_message is not None:
            table.on_message = _library.ON_MESSAGE(message_trampoline)
        if on_close is not None:
            table.on_close = _library.ON_CLOSE(close_trampoline)
        if on_drop is not None:
            table.on_drop = _library.ON_DROP(drop_trampoline)
        if on_http is not None:
            table.on_http = _library.ON_HTTP(request_trampoline("on_http", on_http))
        # The engine copies the table but calls the function pointers for the server's whole
        # life: the CFUNCTYPE objects must stay alive until wspush_server_free has returned.
        handle.keepalive.extend(
            [table, table.on_upgrade, table.on_open, table.on_message, table.on_close, table.on_drop, table.on_http]
        )
        return table

    def _call(self, function: Any, *args: Any) -> None:
        """Calls ``function(server_ptr, *args)`` while holding the pointer alive; raises on error."""
        handle = self._handle
        if handle.ptr is None:
            raise _stopped()  # before registering: see _Handle.inflight
        handle.inflight.append(None)
        try:
            ptr = handle.ptr
            if ptr is None:
                raise _stopped()
            rc = function(ptr, *args)
        finally:
            handle.inflight.pop()
        if rc:
            raise error_for(rc)

    @property
    def port(self) -> int:
        """The port the server listens on (the one picked when listening on port 0)."""
        return self._port

    def publish(self, user: UserId, data: Payload) -> int:
        """Send ``data`` to every open connection of ``user`` (``str`` → text, bytes → binary).
        Returns how many connections it was queued to; 0 when the user has none. Never blocks
        on I/O; messages published by one thread arrive in the order published. With Redis
        (``redis_url``) it only queues the message for Redis and returns 0 (see
        :meth:`publish_wait` and :meth:`publish_async` for the outcome)."""
        if type(user) is str:
            user = user.encode("utf-8")
        elif type(user) is not bytes:
            user = _user_bytes(user)
        if type(data) is str:
            payload, kind = data.encode("utf-8"), KIND_TEXT
        elif type(data) is bytes:
            payload, kind = data, KIND_BINARY
        else:
            payload, kind = _payload(data)
        delivered = c_size_t()
        handle = self._handle
        if handle.ptr is None:
            raise _stopped()  # before registering: see _Handle.inflight
        handle.inflight.append(None)
        try:
            ptr = handle.ptr
            if ptr is None:
                raise _stopped()
            rc = self._lib.wspush_publish(ptr, user, len(user), payload, len(payload), kind, byref(delivered))
        finally:
            handle.inflight.pop()
        if rc:
            raise error_for(rc, "publish")
        return delivered.value

    def publish_with_offset(self, user: UserId, data: Payload) -> Published:
        """:meth:`publish`, also telling the offset the message got in ``user``'s history
        stream: ``Published(delivered, offset)``, ``offset`` ``None`` with history off. The
        offset is assigned whether or not the user has a connection: a ``wspush.v1`` client
        that reconnects with ``since`` is sent the message then."""
        encoded = _user_bytes(user)
        payload, kind = _payload(data)
        delivered, offset = c_size_t(), c_uint64()
        self._call(
            self._lib.wspush_publish_with_offset,
            encoded, len(encoded), payload, len(payload), kind, byref(delivered), byref(offset),
        )
        # The library reports 0 when history is off; offsets are never 0 otherwise.
        return Published(delivered.value, offset.value or None)

    def publish_wait(self, user: UserId, data: Payload, timeout: Optional[float] = None) -> Published:
        """Publishes like :meth:`publish` and waits for the outcome, at most ``timeout`` seconds
        (``None``: as long as ``redis_timeout_ms`` allows; never longer than that).

        With Redis (``redis_url``) ``Published.delivered`` is the number of *nodes* holding a
        connection of ``user`` (each got the message) and ``Published.offset`` the message's
        offset in the user's stream (``None`` with history off). Raises
        :class:`~wspush.UnavailableError` when Redis did not confirm in time or is unreachable:
        the message may still be applied. Without Redis it is :meth:`publish_with_offset` and
        does not wait. Blocks the calling thread (the GIL is released meanwhile); inside a
        :meth:`publish_async` completion of this server it raises
        :class:`~wspush.InCallbackError`."""
        encoded = _user_bytes(user)
        payload, kind = _payload(data)
        timeout_ms = _timeout_ms(timeout)
        delivered, offset = c_size_t(), c_uint64()
        self._call(
            self._lib.wspush_publish_wait,
            encoded, len(encoded), payload, len(payload), kind, timeout_ms, byref(delivered), byref(offset),
        )
        return Published(delivered.value, offset.value or None)

    def publish_async(self, user: UserId, data: Payload, done: PublishDoneCallback) -> None:
        """Publishes like :meth:`publish` without waiting, and calls ``done(outcome)`` exactly
        once: ``outcome`` is a :class:`Published` (as :meth:`publish_wait` returns it) or the
        :class:`~wspush.WspushError` it failed with (:class:`~wspush.UnavailableError`: Redis
        did not confirm in time, the message may still be applied; :class:`~wspush.StoppedError`).

        Without Redis ``done`` runs on the calling thread before this returns; with Redis it
        runs later on the engine's Redis thread (keep it short: it holds up other completions).
        An exception raised by ``done`` is logged (logger ``"wspush"``), never propagated. Inside
        ``done`` the server may be used (``publish``, ``publish_async``, ``stop``, ...) except
        :meth:`publish_wait` and :meth:`free` (:class:`~wspush.InCallbackError`).

        Raises (and then ``done`` is never called) what :meth:`publish` raises, plus
        :class:`~wspush.UnavailableError` when Redis is known to be unreachable or too much
        already waits for it."""
        if not callable(done):
            raise TypeError(f"done must be callable, not {type(done).__name__}")
        encoded = _user_bytes(user)
        payload, kind = _payload(data)
        token = _pending_publishes.add(self._handle, done)
        try:
            self._call(
                self._lib.wspush_publish_async,
                encoded, len(encoded), payload, len(payload), kind, _PUBLISH_DONE, c_void_p(token),
            )
        except BaseException:
            # Refused: the engine will not call done (and, without Redis, has not).
            _pending_publishes.take(token)
            raise

    def broadcast(self, data: Payload) -> int:
        """Send ``data`` to every open connection. Returns how many were open."""
        payload, kind = _payload(data)
        count = c_size_t()
        self._call(self._lib.wspush_broadcast, payload, len(payload), kind, byref(count))
        return count.value

    def send(self, conn: int, data: Payload) -> None:
        """Send ``data`` to one connection. Raises :class:`~wspush.NotFoundError` when it is
        not open (IDs are never reused)."""
        payload, kind = _payload(data)
        self._call(self._lib.wspush_send, _conn_id(conn), payload, len(payload), kind)

    def close(self, conn: int, code: int = 1000, reason: str = "") -> None:
        """Close one *connection* (not the server) with ``code`` (1000-1003, 1007-1014,
        3000-4999) and a ``reason`` of at most 123 UTF-8 bytes; ``on_close`` follows."""
        encoded = reason.encode("utf-8")
        self._call(self._lib.wspush_close, _conn_id(conn), _close_code(code), encoded, len(encoded))

    def disconnect_user(self, user: UserId, code: int = 1000) -> int:
        """Close every connection of ``user`` with ``code``. Returns how many."""
        encoded = _user_bytes(user)
        count = c_size_t()
        self._call(self._lib.wspush_disconnect_user, encoded, len(encoded), _close_code(code), byref(count))
        return count.value

    def accept_upgrade(self, ticket: int, user: UserId) -> None:
        """Complete a deferred upgrade (see :meth:`Request.defer`) by accepting it as ``user``.
        Any thread. Raises :class:`~wspush.NotFoundError` when the ticket is no longer pending
        (already decided, timed out, client gone)."""
        encoded = _user_bytes(user)
        self._decide(self._lib.wspush_upgrade_accept, _conn_id(ticket), encoded, len(encoded))

    def reject_upgrade(self, ticket: int, status: int = 401) -> None:
        """Complete a deferred upgrade by answering HTTP ``status`` (400-599). Any thread.
        Raises :class:`~wspush.NotFoundError` as :meth:`accept_upgrade` does."""
        self._decide(self._lib.wspush_upgrade_reject, _conn_id(ticket), _http_status(status))

    def _decide(self, function: Any, ticket: int, *args: Any) -> None:
        """The first decision on a ticket goes to the engine; any later one is NOT_FOUND."""
        if self._handle.ptr is None:
            raise _stopped()
        tickets = self._handle.tickets
        deadline = tickets.take(ticket)
        if deadline is None:
            raise error_for(Result.NOT_FOUND, f"ticket {ticket} is not awaiting a decision")
        try:
            self._call(function, ticket, *args)
        except WspushError as error:
            # A refused argument (user ID, status) decided nothing: the ticket is still open.
            if error.code not in (Result.NOT_FOUND, Result.STOPPED):
                tickets.restore(ticket, deadline)
            raise

    def stats(self) -> Stats:
        """A snapshot of the gauges and counters (works after :meth:`stop` too, not after
        :meth:`free`)."""
        snapshot = _StatsSnapshot()
        snapshot.size = ctypes.sizeof(_StatsSnapshot)
        self._call(self._lib.wspush_stats, byref(snapshot))
        return Stats(**{field.name: getattr(snapshot, field.name) for field in fields(Stats)})

    def stop(self) -> None:
        """Graceful stop: stop accepting, close every connection with 1001, flush for up to
        ``drain_timeout_ms``, call ``on_close`` for each, end the I/O threads. Blocks until
        done, except inside a callback, where it only starts the stop. Harmless to repeat;
        afterwards publish and the like raise :class:`~wspush.StoppedError`."""
        handle = self._handle
        if handle.ptr is None:
            return  # already freed, hence stopped
        handle.inflight.append(None)
        try:
            ptr = handle.ptr
            if ptr is None:
                return  # already freed, hence stopped
            rc = handle.stop_engine(ptr)
        finally:
            handle.inflight.pop()
        if rc:
            raise error_for(rc, "stop")

    def free(self) -> None:
        """:meth:`stop`, then release the native server. Every later call raises
        :class:`~wspush.StoppedError` (``stop`` and ``free`` do nothing). Safe while other
        threads still call the server: the release waits for their calls to return. Raises
        :class:`~wspush.InCallbackError` inside this server's callbacks."""
        if self._handle.on_io_thread():
            raise InCallbackError(Result.IN_CALLBACK, "free() inside a callback; call stop() there")
        self._handle.release()

    def __enter__(self) -> "Server":
        """The server itself; leaving the block calls :meth:`free`."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Frees the server (stop, then release)."""
        self.free()

    def __repr__(self) -> str:
        state = "freed" if self._handle.released else "running"
        return f"<wspush.Server port={self._port} {state}>"
