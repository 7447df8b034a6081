"""Finding and loading libwspush.so, and the ctypes declarations of every C function.

Loaded with ``ctypes.CDLL`` (never ``PyDLL``): CDLL releases the GIL for the duration of each
call, which the engine needs because its I/O threads take the GIL to run Python callbacks while
a Python thread may be blocked in ``wspush_server_stop``.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_size_t,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path
from typing import Optional, Sequence

LIBRARY_ENV = "WSPUSH_LIBRARY"
"""Environment variable naming the shared library to load (a path). When set, it is the only
place looked at, so that a misconfigured path fails loudly instead of silently loading another
build."""

LIBRARY_FILE = {"darwin": "libwspush.dylib", "win32": "wspush.dll"}.get(sys.platform, "libwspush.so")

# wspush_message_kind and wspush_slow_consumer_policy values (include/wspush.h).
KIND_TEXT = 1
KIND_BINARY = 2
SLOW_CONSUMER_CLOSE = 0
SLOW_CONSUMER_DROP = 1


class LibraryNotFoundError(OSError):
    """libwspush could not be found or loaded. ``tried`` lists every path looked at, in order."""

    def __init__(self, message: str, tried: Sequence[str]) -> None:
        super().__init__(message)
        self.tried: list[str] = list(tried)


def _checkout_candidates(start: Path) -> list[Path]:
    """``<dir>/target/release/<lib>`` for every ancestor of ``start`` that holds a Cargo.toml."""
    candidates = []
    for directory in [start, *start.parents]:
        if (directory / "Cargo.toml").is_file():
            candidates.append(directory / "target" / "release" / LIBRARY_FILE)
    return candidates


def find_library(env_value: Optional[str], package_dir: Path, cwd: Path) -> Path:
    """Where the shared library is, in this order: ``env_value`` (the WSPUSH_LIBRARY setting;
    when set, nothing else is tried), next to the package, then ``target/release`` of the Cargo
    checkout found by walking up from the package and then from ``cwd``. Raises
    :class:`LibraryNotFoundError` naming every path tried."""
    if env_value:
        path = Path(env_value)
        if path.is_file():
            return path
        raise LibraryNotFoundError(
            f"wspush: {LIBRARY_ENV}={env_value} is not a file. Point {LIBRARY_ENV} at "
            f"{LIBRARY_FILE} (built by `cargo build --release` into target/release/), or unset it "
            f"to search next to the package and in the checkout's target/release.\n"
            f"Paths tried:\n  {path}",
            [str(path)],
        )
    tried: list[Path] = [package_dir / LIBRARY_FILE]
    for start in (package_dir, cwd):
        for candidate in _checkout_candidates(start.resolve()):
            if candidate not in tried:
                tried.append(candidate)
    for candidate in tried:
        if candidate.is_file():
            return candidate
    listing = "\n  ".join(str(path) for path in tried)
    raise LibraryNotFoundError(
        f"wspush: cannot find {LIBRARY_FILE}. Build it with `cargo build --release` in the wspush "
        f"checkout, or set {LIBRARY_ENV} to its path.\n"
        f"Paths tried ({LIBRARY_ENV} unset; next to the package, then target/release of every "
        f"directory with a Cargo.toml above the package and above the current directory):\n  "
        f"{listing}",
        [str(path) for path in tried],
    )


# Callback types. Borrowed buffers arrive as c_void_p (an address), never c_char_p, which would
# stop at the first NUL byte.
ON_UPGRADE = CFUNCTYPE(None, c_void_p, c_void_p, c_void_p)
ON_OPEN = CFUNCTYPE(None, c_void_p, c_void_p, c_uint64, c_void_p, c_size_t)
ON_MESSAGE = CFUNCTYPE(None, c_void_p, c_void_p, c_uint64, c_void_p, c_size_t, c_uint32, c_void_p, c_size_t)
ON_CLOSE = CFUNCTYPE(None, c_void_p, c_void_p, c_uint64, c_void_p, c_size_t, c_uint16)
ON_DROP = CFUNCTYPE(None, c_void_p, c_void_p, c_uint64, c_void_p, c_size_t, c_size_t)
ON_HTTP = CFUNCTYPE(None, c_void_p, c_void_p, c_void_p)
# wspush_publish_done_fn(userdata, result, delivered, offset)
PUBLISH_DONE = CFUNCTYPE(None, c_void_p, c_uint32, c_size_t, c_uint64)


class Callbacks(Structure):
    """``wspush_callbacks``."""

    _fields_ = [
        ("size", c_size_t),
        ("userdata", c_void_p),
        ("on_upgrade", ON_UPGRADE),
        ("on_open", ON_OPEN),
        ("on_message", ON_MESSAGE),
        ("on_close", ON_CLOSE),
        ("on_drop", ON_DROP),
        ("on_http", ON_HTTP),
    ]


_R = c_uint32  # wspush_result
_P = c_void_p  # any opaque handle
_OUT_STR = POINTER(c_void_p)
_OUT_LEN = POINTER(c_size_t)

# name: (restype, argtypes)
_PROTOTYPES: dict[str, tuple[object, list[object]]] = {
    "wspush_version": (c_char_p, []),
    "wspush_result_str": (c_char_p, [c_uint32]),
    "wspush_config_new": (_P, []),
    "wspush_config_free": (None, [_P]),
    "wspush_config_set_listen": (_R, [_P, c_char_p, c_size_t]),
    "wspush_config_set_path": (_R, [_P, c_char_p, c_size_t]),
    "wspush_config_add_allowed_origin": (_R, [_P, c_char_p, c_size_t]),
    "wspush_config_set_threads": (_R, [_P, c_size_t]),
    "wspush_config_set_max_connections": (_R, [_P, c_size_t]),
    "wspush_config_set_max_message_size": (_R, [_P, c_size_t]),
    "wspush_config_set_ping_interval_ms": (_R, [_P, c_uint64]),
    "wspush_config_set_idle_timeout_ms": (_R, [_P, c_uint64]),
    "wspush_config_set_handshake_timeout_ms": (_R, [_P, c_uint64]),
    "wspush_config_set_max_queue_bytes": (_R, [_P, c_size_t]),
    "wspush_config_set_max_header_bytes": (_R, [_P, c_size_t]),
    "wspush_config_set_max_handshakes_per_thread": (_R, [_P, c_size_t]),
    "wspush_config_set_max_connections_per_user": (_R, [_P, c_size_t]),
    "wspush_config_set_drain_timeout_ms": (_R, [_P, c_uint64]),
    "wspush_config_set_close_timeout_ms": (_R, [_P, c_uint64]),
    "wspush_config_set_max_connections_per_ip": (_R, [_P, c_size_t]),
    "wspush_config_set_max_handshakes_per_ip_per_sec": (_R, [_P, c_uint32]),
    "wspush_config_set_jwt_hs256_secret": (_R, [_P, c_char_p, c_size_t]),
    "wspush_config_set_jwt_leeway_ms": (_R, [_P, c_uint64]),
    "wspush_config_set_slow_consumer_policy": (_R, [_P, c_uint32]),
    "wspush_config_set_thread_stack_size": (_R, [_P, c_size_t]),
    "wspush_config_set_proxy_protocol": (_R, [_P, c_bool]),
    "wspush_config_add_trusted_proxy": (_R, [_P, c_char_p, c_size_t]),
    "wspush_config_set_message_timeout_ms": (_R, [_P, c_uint64]),
    "wspush_config_set_max_partial_input_bytes": (_R, [_P, c_size_t]),
    "wspush_config_set_max_pending_handshakes_per_ip": (_R, [_P, c_size_t]),
    "wspush_config_set_socket_buffers": (_R, [_P, c_size_t, c_size_t]),
    "wspush_config_set_history_max_messages": (_R, [_P, c_size_t]),
    "wspush_config_set_history_ttl_ms": (_R, [_P, c_uint64]),
    "wspush_config_set_history_max_bytes": (_R, [_P, c_size_t]),
    "wspush_config_set_redis_url": (_R, [_P, c_char_p, c_size_t]),
    "wspush_config_set_redis_timeout_ms": (_R, [_P, c_uint64]),
    "wspush_config_set_callbacks": (_R, [_P, POINTER(Callbacks)]),
    "wspush_request_method": (_R, [_P, _OUT_STR, _OUT_LEN]),
    "wspush_request_path": (_R, [_P, _OUT_STR, _OUT_LEN]),
    "wspush_request_query": (_R, [_P, _OUT_STR, _OUT_LEN]),
    "wspush_request_peer": (_R, [_P, _OUT_STR, _OUT_LEN]),
    "wspush_request_query_param": (_R, [_P, c_char_p, c_size_t, _OUT_STR, _OUT_LEN]),
    "wspush_request_header": (_R, [_P, c_char_p, c_size_t, _OUT_STR, _OUT_LEN]),
    "wspush_request_header_count": (_R, [_P, _OUT_LEN]),
    "wspush_request_header_at": (_R, [_P, c_size_t, _OUT_STR, _OUT_LEN, _OUT_STR, _OUT_LEN]),
    "wspush_request_ticket": (_R, [_P, POINTER(c_uint64)]),
    "wspush_request_verified_user": (_R, [_P, _OUT_STR, _OUT_LEN]),
    "wspush_request_accept": (_R, [_P, c_char_p, c_size_t]),
    "wspush_request_reject": (_R, [_P, c_uint16]),
    "wspush_request_defer": (_R, [_P, POINTER(c_uint64)]),
    "wspush_request_respond": (_R, [_P, c_uint16, c_char_p, c_size_t, c_char_p, c_size_t]),
    "wspush_server_start": (_R, [_P, POINTER(c_void_p)]),
    "wspush_server_local_port": (_R, [_P, POINTER(c_uint16)]),
    "wspush_server_stop": (_R, [_P]),
    "wspush_server_free": (_R, [_P]),
    "wspush_publish": (_R, [_P, c_char_p, c_size_t, c_char_p, c_size_t, c_uint32, _OUT_LEN]),
    "wspush_publish_with_offset": (
        _R,
        [_P, c_char_p, c_size_t, c_char_p, c_size_t, c_uint32, _OUT_LEN, POINTER(c_uint64)],
    ),
    "wspush_publish_wait": (
        _R,
        [_P, c_char_p, c_size_t, c_char_p, c_size_t, c_uint32, c_uint64, _OUT_LEN, POINTER(c_uint64)],
    ),
    "wspush_publish_async": (_R, [_P, c_char_p, c_size_t, c_char_p, c_size_t, c_uint32, PUBLISH_DONE, c_void_p]),
    "wspush_broadcast": (_R, [_P, c_char_p, c_size_t, c_uint32, _OUT_LEN]),
    "wspush_send": (_R, [_P, c_uint64, c_char_p, c_size_t, c_uint32]),
    "wspush_close": (_R, [_P, c_uint64, c_uint16, c_char_p, c_size_t]),
    "wspush_disconnect_user": (_R, [_P, c_char_p, c_size_t, c_uint16, _OUT_LEN]),
    "wspush_upgrade_accept": (_R, [_P, c_uint64, c_char_p, c_size_t]),
    "wspush_upgrade_reject": (_R, [_P, c_uint64, c_uint16]),
    "wspush_stats": (_R, [_P, c_void_p]),  # a snapshot struct built from Stats in _server.py
    "wspush_stats_field_count": (c_size_t, []),
    "wspush_stats_field": (_R, [c_size_t, POINTER(c_char_p), POINTER(c_char_p), POINTER(c_uint32)]),
}

_loaded: Optional[ctypes.CDLL] = None
_load_lock = threading.Lock()


def load() -> ctypes.CDLL:
    """The loaded library with every prototype declared (loaded once, on first use)."""
    global _loaded
    if _loaded is not None:
        return _loaded
    with _load_lock:
        if _loaded is None:
            path = find_library(os.environ.get(LIBRARY_ENV), Path(__file__).resolve().parent, Path.cwd())
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as error:
                raise LibraryNotFoundError(
                    f"wspush: found {path} but could not load it: {error}", [str(path)]
                ) from error
            for name, (restype, argtypes) in _PROTOTYPES.items():
                try:
                    function = getattr(lib, name)
                except AttributeError as error:
                    raise LibraryNotFoundError(
                        f"wspush: {path} lacks {name}: it is not libwspush, or an older build", [str(path)]
                    ) from error
                function.restype = restype
                function.argtypes = argtypes
            _loaded = lib
    return _loaded
