/*
 * wspush: a WebSocket push engine (libwspush.so / libwspush.a).
 *
 * Holds very many mostly idle WebSocket connections and pushes messages to users from any
 * thread. The host decides who a connection belongs to in on_upgrade and calls wspush_publish.
 *
 * Typical use:
 *     wspush_config *cfg = wspush_config_new();
 *     wspush_config_set_listen(cfg, "0.0.0.0:8080", 12);
 *     wspush_callbacks cb = {0};
 *     cb.size = sizeof cb; cb.userdata = app; cb.on_upgrade = my_auth;
 *     wspush_config_set_callbacks(cfg, &cb);
 *     const wspush_server *server = NULL;
 *     if (wspush_server_start(cfg, &server) != WSPUSH_RESULT_OK) ...;
 *     wspush_config_free(cfg);
 *     wspush_publish(server, user, user_len, msg, msg_len, WSPUSH_MESSAGE_KIND_TEXT, NULL);
 *     ...
 *     wspush_server_free(server);   (stops gracefully, then releases)
 *
 * HISTORY (off by default): with wspush_config_set_history_max_messages > 0 every publish to a
 * user gets the next offset of that user's stream (wspush_publish_with_offset returns it), and
 * a client speaking the wspush.v1 subprotocol that reconnects with ?since=EPOCH:OFFSET is sent
 * what it missed (bindings/js/PROTOCOL.md). Clients that do not offer wspush.v1 get raw frames.
 *
 * CONVENTIONS
 * - Fallible functions return wspush_result; WSPUSH_RESULT_OK is 0. Values never change
 *   meaning; wspush_result_str() describes one.
 * - Opaque handles are made by wspush_config_new / wspush_server_start and released exactly
 *   once by the matching _free. Freeing NULL is a no-op.
 * - Every pointer argument is checked: NULL gives WSPUSH_RESULT_NULL_ARGUMENT, except the
 *   optional count out-parameters documented as "may be NULL".
 * - Buffers are (pointer, length) pairs and need no NUL terminator; NULL with length 0 is the
 *   empty buffer. Text arguments (addresses, paths, origins, close reasons, names) must be
 *   UTF-8 (else WSPUSH_RESULT_INVALID_UTF8). Every length has a documented maximum (user IDs
 *   WSPUSH_MAX_USER_ID_LEN, close reasons WSPUSH_MAX_CLOSE_REASON_LEN, addresses
 *   WSPUSH_MAX_ADDRESS_LEN, other names and texts WSPUSH_MAX_ARG_LEN, payloads max_queue_bytes):
 *   the library cannot know a buffer's real size, so a longer length is refused with that
 *   argument's error code before any byte is read. Out-parameters are written only when the
 *   call returns WSPUSH_RESULT_OK.
 * - User IDs are 1-255 bytes and never contain NUL (WSPUSH_RESULT_INVALID_USER_ID): a host that
 *   treats an ID as a C string would see "ali" for "ali\0ce", another user.
 * - Strings returned through out-parameters are NOT NUL-terminated: use their length. They are
 *   borrowed: valid only during the callback that received the request.
 * - Structs with a leading `size` field (wspush_callbacks, wspush_stats_snapshot) only ever
 *   grow at the end: set size = sizeof(the struct) and code built against an older header
 *   keeps working with a newer library.
 * - A panic inside wspush is caught at the boundary and reported as WSPUSH_RESULT_PANIC (or
 *   NULL for functions returning pointers); it never unwinds into the host.
 *
 * THREADING
 * - Callbacks run on the engine's I/O threads, several at once: the callbacks and whatever
 *   userdata points to must be safe to use from any thread. userdata must stay valid until
 *   wspush_server_free returns.
 * - A callback that blocks stalls the connections of its I/O thread (only those) until it
 *   returns: hand slow work (e.g. a database lookup for auth) to your own threads and answer
 *   later with wspush_request_defer + wspush_upgrade_accept / wspush_upgrade_reject.
 * - wspush_publish, wspush_publish_with_offset, wspush_publish_async, wspush_broadcast,
 *   wspush_send, wspush_close, wspush_disconnect_user, wspush_upgrade_accept,
 *   wspush_upgrade_reject, wspush_stats, wspush_server_local_port and wspush_server_stop are
 *   thread-safe and never block on I/O; they may be called from any thread, including from
 *   inside any callback, without deadlock.
 * - With Redis (wspush_config_set_redis_url) one more engine thread talks to Redis. Publish
 *   completions (wspush_publish_done_fn) run there; they may call everything above.
 *   wspush_publish_wait blocks its caller until Redis answers or the timeout passes: call it
 *   from your own threads (inside a publish completion it returns WSPUSH_RESULT_IN_CALLBACK;
 *   inside an I/O callback it works but stalls that I/O thread's connections meanwhile).
 * - Inside a callback, wspush_server_stop only starts the stop (the I/O thread cannot wait for
 *   itself) and wspush_server_free returns WSPUSH_RESULT_IN_CALLBACK without doing anything.
 * - wspush_server_free must be the last use of a server by any thread. wspush_config_* calls
 *   on one configuration must not run concurrently.
 * - Callbacks must return normally: no longjmp out of them and no C++ exception through them.
 * - Callbacks run on stacks of wspush_config_set_thread_stack_size bytes (default 8 MiB, as an
 *   ordinary glibc thread): raise it for callback code that recurses deeper than that.
 *
 * FORK
 * - A server belongs to the process that started it. fork() copies only the calling thread, so
 *   a child has no I/O threads: it must not call any wspush function on an inherited server,
 *   not even wspush_server_free (calls fail, e.g. with WSPUSH_RESULT_PANIC, or wait forever).
 *   Fork before starting servers, or exec (or _exit) in the child promptly.
 * - Every descriptor the engine opens (listening and accepted sockets, epoll, eventfd) is
 *   close-on-exec, so an exec'd child keeps none. A child that does not exec keeps the
 *   listening sockets open: after the parent stops, new clients then wait in a backlog nobody
 *   accepts until the child exits.
 */


#ifndef WSPUSH_H
#define WSPUSH_H

/* Generated from src/ffi by build.rs with cbindgen. Do not edit: change src/ffi and rebuild. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** This header's library version (as wspush_version() returns it: "MAJOR.MINOR.PATCH"). */
#define WSPUSH_VERSION_MAJOR 0
#define WSPUSH_VERSION_MINOR 1
#define WSPUSH_VERSION_PATCH 0

/**
 * Longest user ID, in bytes (the shortest is 1). User IDs never contain a NUL byte: one that
 * does is INVALID_USER_ID everywhere (a C host reading it as a C string would see another user).
 */
#define WSPUSH_MAX_USER_ID_LEN 255

/**
 * Longest close reason, in bytes (RFC 6455: a control frame's 125 bytes minus the code).
 */
#define WSPUSH_MAX_CLOSE_REASON_LEN 123

/**
 * Longest listen address or trusted-proxy network accepted, in bytes. Longer is refused on the
 * length alone, before the buffer is read.
 */
#define WSPUSH_MAX_ADDRESS_LEN 255

/**
 * Longest of the other text and byte arguments, in bytes: path, allowed origin, JWT secret,
 * query parameter and header names, Content-Type. Longer is refused with INVALID_ARGUMENT on
 * the length alone, before the buffer is read.
 */
#define WSPUSH_MAX_ARG_LEN 1024

/**
 * Longest timeout the `_ms` setters accept: 2^32-1 ms, about 49 days.
 */
#define WSPUSH_MAX_TIMEOUT_MS 4294967295

/**
 * Result of every fallible call. Values are part of the ABI: never renumbered, new codes are
 * only added with new numbers.
 */
enum wspush_result
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : uint32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
    /**
     * Success.
     */
    WSPUSH_RESULT_OK = 0,
    /**
     * A required pointer argument was NULL (or a NULL buffer with a non-zero length).
     */
    WSPUSH_RESULT_NULL_ARGUMENT = 1,
    /**
     * A value is out of range, or the call is not allowed here (e.g. accepting in `on_http`).
     */
    WSPUSH_RESULT_INVALID_ARGUMENT = 2,
    /**
     * Text that must be UTF-8 is not.
     */
    WSPUSH_RESULT_INVALID_UTF8 = 3,
    /**
     * The listen address is not "host:port" or does not resolve.
     */
    WSPUSH_RESULT_INVALID_ADDRESS = 4,
    /**
     * The listening socket could not be bound (address in use, permission, ...).
     */
    WSPUSH_RESULT_BIND_FAILED = 5,
    /**
     * A user ID must be 1 to 255 bytes long and contain no NUL byte.
     */
    WSPUSH_RESULT_INVALID_USER_ID = 6,
    /**
     * Close codes must be 1000-1003, 1007-1014 or 3000-4999.
     */
    WSPUSH_RESULT_INVALID_CLOSE_CODE = 7,
    /**
     * A close reason must be at most 123 bytes of UTF-8 (a longer length is refused before
     * the buffer is read).
     */
    WSPUSH_RESULT_INVALID_CLOSE_REASON = 8,
    /**
     * An HTTP status is out of range (400-599 to reject, 200-599 to respond).
     */
    WSPUSH_RESULT_INVALID_STATUS = 9,
    /**
     * The payload is larger than max_queue_bytes (it could never be queued).
     */
    WSPUSH_RESULT_MESSAGE_TOO_LARGE = 10,
    /**
     * No such open connection, pending upgrade, query parameter, header or peer address.
     */
    WSPUSH_RESULT_NOT_FOUND = 11,
    /**
     * The server is stopping or stopped.
     */
    WSPUSH_RESULT_STOPPED = 12,
    /**
     * The engine could not create its threads or pollers.
     */
    WSPUSH_RESULT_IO = 13,
    /**
     * The call is not allowed from inside a callback of this server (`wspush_server_free`), or
     * would wait for the thread it is called on (`wspush_publish_wait` in a publish completion).
     */
    WSPUSH_RESULT_IN_CALLBACK = 14,
    /**
     * A bug in wspush: a panic was caught at the C boundary (the call had no effect or only
     * part of it), or an engine thread panicked earlier and the server stopped itself (every
     * later call on it returns PANIC: stop and free it, then start a new one).
     */
    WSPUSH_RESULT_PANIC = 15,
    /**
     * Redis (`wspush_config_set_redis_url`) did not confirm the publish within the Redis
     * timeout, or is known to be unreachable. The message may still be applied (then delivered
     * and numbered like any other). The admin API of wspushd answers 503.
     */
    WSPUSH_RESULT_UNAVAILABLE = 16,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum wspush_result wspush_result;
#else
typedef uint32_t wspush_result;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

/**
 * Server configuration under construction. Made by `wspush_config_new`, released by
 * `wspush_config_free`. Not thread-safe: use one from one thread at a time.
 */
typedef struct wspush_config wspush_config;

/**
 * An HTTP request seen by `on_upgrade` or `on_http`. Borrowed: valid only until that callback
 * returns, and so is every pointer the accessors hand out (none is NUL-terminated; use the
 * length, e.g. `printf("%.*s", (int)len, ptr)`). Use it only on the callback's own thread; to
 * decide elsewhere, defer and pass the ticket.
 */
typedef struct wspush_request wspush_request;

/**
 * A running server. Made by `wspush_server_start`, released by `wspush_server_free`. Every
 * function taking a `const wspush_server *` is thread-safe, except `wspush_server_free`.
 */
typedef struct wspush_server wspush_server;

/**
 * Called for each WebSocket upgrade request that passed the protocol checks (path, version,
 * key, origin). Read the request with the `wspush_request_*` accessors and decide with
 * `wspush_request_accept`, `wspush_request_reject` or `wspush_request_defer`. Deciding nothing
 * rejects with 401. `request` is valid only until the callback returns.
 */
typedef void (*wspush_on_upgrade_fn)(void *userdata,
                                     const struct wspush_server *server,
                                     struct wspush_request *request);

/**
 * A connection was upgraded and registered under `user` (1-255 bytes, no NUL, borrowed for the
 * call).
 */
typedef void (*wspush_on_open_fn)(void *userdata,
                                  const struct wspush_server *server,
                                  uint64_t conn,
                                  const uint8_t *user,
                                  size_t user_len);

/**
 * A WebSocket message type: `WSPUSH_MESSAGE_KIND_TEXT` or `WSPUSH_MESSAGE_KIND_BINARY`. A
 * plain integer rather than a C enum so that an out-of-range value from the host is reported
 * (`WSPUSH_RESULT_INVALID_ARGUMENT`) instead of being undefined behaviour.
 */
typedef uint32_t wspush_message_kind;

/**
 * A complete message arrived from a client (fragments reassembled; text validated as UTF-8,
 * not NUL-terminated). `user` and `payload` are borrowed for the call.
 */
typedef void (*wspush_on_message_fn)(void *userdata,
                                     const struct wspush_server *server,
                                     uint64_t conn,
                                     const uint8_t *user,
                                     size_t user_len,
                                     wspush_message_kind kind,
                                     const uint8_t *payload,
                                     size_t payload_len);

/**
 * An opened connection ended; called exactly once per `on_open`. `code` is the close code:
 * the peer's, or ours (1001 on stop, 1008 slow consumer, 1002/1007/1009 protocol errors), or
 * 1006 when the connection was lost without a close handshake.
 */
typedef void (*wspush_on_close_fn)(void *userdata,
                                   const struct wspush_server *server,
                                   uint64_t conn,
                                   const uint8_t *user,
                                   size_t user_len,
                                   uint16_t code);

/**
 * A message for `conn` was dropped because its queue was full and the slow-consumer policy is
 * `WSPUSH_SLOW_CONSUMER_DROP`. `dropped_bytes` is the frame's size on the wire (payload plus 2-10
 * header bytes).
 */
typedef void (*wspush_on_drop_fn)(void *userdata,
                                  const struct wspush_server *server,
                                  uint64_t conn,
                                  const uint8_t *user,
                                  size_t user_len,
                                  size_t dropped_bytes);

/**
 * A plain HTTP request (no `Upgrade: websocket`) arrived. Answer it with
 * `wspush_request_respond`; not answering gives the default 426 Upgrade Required. The
 * connection is closed after the response. `request` is valid only until the callback returns.
 */
typedef void (*wspush_on_http_fn)(void *userdata,
                                  const struct wspush_server *server,
                                  struct wspush_request *request);

/**
 * The host's callbacks. Zero-initialise it, set `size = sizeof(wspush_callbacks)`, then fill in
 * what you need; NULL callbacks are skipped (a NULL `on_upgrade` rejects every upgrade with
 * 401). Fields are only ever added at the end: a host built against an older header passes a
 * smaller `size` and the newer fields count as NULL.
 *
 * Every callback gets `userdata` first and the server second; the server pointer is valid for
 * the whole call (also during `wspush_server_start`, before it returned), so callbacks may
 * publish, send, close, or decide upgrades with it.
 */
typedef struct wspush_callbacks {
    /**
     * `sizeof(wspush_callbacks)` as the host compiled it.
     */
    size_t size;
    /**
     * Passed unchanged to every callback. Callbacks run on several engine threads at once, so
     * whatever it points to must be safe to use from any thread; it must stay valid until
     * `wspush_server_free` returns.
     */
    void *userdata;
    wspush_on_upgrade_fn on_upgrade;
    wspush_on_open_fn on_open;
    wspush_on_message_fn on_message;
    wspush_on_close_fn on_close;
    wspush_on_drop_fn on_drop;
    wspush_on_http_fn on_http;
} wspush_callbacks;

/**
 * What happens when a connection's unsent data would pass max_queue_bytes.
 */
typedef uint32_t wspush_slow_consumer_policy;

/**
 * A publish's outcome (`wspush_publish_async`): `result` is OK, UNAVAILABLE (Redis did not
 * confirm within its timeout; the message may still be applied) or STOPPED; `delivered` and
 * `offset` as `wspush_publish_wait` writes them (0 unless OK). Called exactly once per publish
 * that `wspush_publish_async` accepted: with Redis on the engine's Redis thread, without Redis
 * on the calling thread before `wspush_publish_async` returns. It may call any wspush function
 * except `wspush_publish_wait` on the same server (IN_CALLBACK) and `wspush_server_free`.
 */
typedef void (*wspush_publish_done_fn)(void *userdata, wspush_result result, size_t delivered, uint64_t offset);

/**
 * Gauges and counters, filled in by `wspush_stats`. Set `size = sizeof(wspush_stats_snapshot)`
 * before the call. Fields are only ever added at the end; a host built against an older header
 * gets the fields its `size` covers. `*_total` counters only grow.
 */
typedef struct wspush_stats_snapshot {
    /**
     * `sizeof(wspush_stats_snapshot)` as the host compiled it; not written by wspush.
     */
    size_t size;
    /**
     * Open (upgraded) connections now.
     */
    uint64_t connections;
    /**
     * Connections accepted but not yet upgraded (including deferred decisions).
     */
    uint64_t handshakes;
    /**
     * Distinct users with at least one open connection.
     */
    uint64_t users;
    /**
     * Sockets accepted.
     */
    uint64_t accepted_total;
    /**
     * Successful upgrades.
     */
    uint64_t upgrades_total;
    /**
     * Requests answered with an HTTP error (400/403/404/426/431, host rejections, ...).
     */
    uint64_t rejected_total;
    /**
     * Sockets answered 503 because max_connections was reached.
     */
    uint64_t over_capacity_total;
    /**
     * Messages received from clients.
     */
    uint64_t messages_in_total;
    /**
     * Messages handed to sockets (one per recipient connection).
     */
    uint64_t messages_out_total;
    /**
     * Bytes written to sockets, frame headers included.
     */
    uint64_t bytes_out_total;
    /**
     * Calls to publish.
     */
    uint64_t publishes_total;
    /**
     * Calls to broadcast.
     */
    uint64_t broadcasts_total;
    /**
     * Messages dropped for a slow consumer (policy drop).
     */
    uint64_t dropped_total;
    /**
     * Connections closed with 1008 for a slow consumer (policy close).
     */
    uint64_t slow_consumer_closes_total;
    /**
     * Connections closed for a protocol violation (1002, 1007, 1009).
     */
    uint64_t protocol_errors_total;
    /**
     * Connections closed by the handshake deadline or the idle timeout.
     */
    uint64_t timeouts_total;
    /**
     * Heartbeat pings sent.
     */
    uint64_t pings_total;
    /**
     * Sockets answered 429 by a per-address limit (max connections or handshakes per IP).
     */
    uint64_t ip_limited_total;
    /**
     * Bytes queued for connections that their sockets have not taken yet.
     */
    uint64_t queued_bytes;
    /**
     * Bytes held for incomplete client frames and messages (max_partial_input_bytes).
     */
    uint64_t partial_input_bytes;
    /**
     * Connections closed with 1008: a started frame or message not completed in time.
     */
    uint64_t message_timeouts_total;
    /**
     * Connections closed with 1013 because max_partial_input_bytes was reached.
     */
    uint64_t partial_input_refusals_total;
    /**
     * The connection cap in force: max_connections, lowered to what RLIMIT_NOFILE allows.
     */
    uint64_t max_connections;
    /**
     * Users with a history stream (history on).
     */
    uint64_t history_users;
    /**
     * Messages held in users' histories.
     */
    uint64_t history_messages;
    /**
     * Bytes charged to history: payloads plus bookkeeping (see history_max_bytes).
     */
    uint64_t history_bytes;
    /**
     * wspush.v1 connections that asked to resume (since=...).
     */
    uint64_t resumes_total;
    /**
     * Resumes that recovered: everything after since was replayed.
     */
    uint64_t recoveries_total;
    /**
     * Resumes that could not be honoured (other epoch, trimmed, expired, too large).
     */
    uint64_t recovery_failures_total;
    /**
     * 1 while this node's Redis connections are all up and logged in (0 without Redis).
     */
    uint64_t redis_connected;
    /**
     * Users whose Redis channel this node is subscribed to (local users, and for a few seconds those whose last connection closed).
     */
    uint64_t redis_subscribed_users;
    /**
     * Publishes Redis did not confirm in time (answered Unavailable; they may still have been applied).
     */
    uint64_t redis_publish_failures_total;
    /**
     * Reads of a user's stream to fill a jump in offsets or to catch up after a lost Redis connection.
     */
    uint64_t redis_fills_total;
    /**
     * Users whose wspush.v1 connections were closed with 1012 because history under them was lost.
     */
    uint64_t redis_resets_total;
} wspush_stats_snapshot;

/**
 * Whether a value of `wspush_stats_snapshot` is a gauge (goes up and down) or a counter (only
 * grows; its name ends in `_total`).
 */
typedef uint32_t wspush_stat_kind;

/**
 * UTF-8 text (WebSocket opcode 1). Messages from clients are validated; yours are not.
 */
#define WSPUSH_MESSAGE_KIND_TEXT 1

/**
 * Binary data (WebSocket opcode 2).
 */
#define WSPUSH_MESSAGE_KIND_BINARY 2

/**
 * Close the connection with 1008 (default); the client reconnects and resyncs.
 */
#define WSPUSH_SLOW_CONSUMER_CLOSE 0

/**
 * Drop that message for that connection only (`on_drop` is called) and keep it open.
 */
#define WSPUSH_SLOW_CONSUMER_DROP 1

/**
 * A gauge: Prometheus type "gauge".
 */
#define WSPUSH_STAT_KIND_GAUGE 0

/**
 * A counter: Prometheus type "counter".
 */
#define WSPUSH_STAT_KIND_COUNTER 1

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * A new configuration with the defaults: listen "127.0.0.1:8080", path "/ws", one I/O thread
 * per core, 1,000,000 connections, 64 KiB messages, ping every 30 s, idle timeout 75 s,
 * handshake timeout 10 s, 1 MiB queue per connection with the close policy, any Origin, 8 KiB
 * request heads, 1024 handshakes per thread, no per-user or per-IP limit, no JWT authentication,
 * no PROXY protocol, 5 s drain, 2 s close timeout, 8 MiB I/O thread stacks, history off (once
 * turned on: 600 s TTL, 64 MiB for all users), no callbacks. Returns NULL only on an internal
 * error. Release with `wspush_config_free`.
 */
struct wspush_config *wspush_config_new(void);

/**
 * Releases a configuration. NULL is a no-op. A running server does not need its configuration:
 * `wspush_server_start` copies it.
 *
 * # Safety
 * `config` must be NULL or come from `wspush_config_new` and not be freed yet.
 */
void wspush_config_free(struct wspush_config *config);

/**
 * Sets the listen address, "host:port" (UTF-8, `address_len` bytes, no NUL needed), e.g.
 * "0.0.0.0:8080" or "[::1]:0". Port 0 picks a free port (see `wspush_server_local_port`).
 * Returns INVALID_ADDRESS when it is not host:port with a numeric port or is longer than
 * WSPUSH_MAX_ADDRESS_LEN (checked before reading); the host name is resolved by
 * `wspush_server_start`.
 *
 * # Safety
 * `config` must be NULL or a live configuration; `address` must be NULL or point to
 * `address_len` readable bytes.
 */
wspush_result wspush_config_set_listen(struct wspush_config *config, const char *address, size_t address_len);

/**
 * Sets the request path that accepts upgrades (default "/ws"; other paths get 404). Must start
 * with '/' and be at most WSPUSH_MAX_ARG_LEN bytes (else INVALID_ARGUMENT).
 *
 * # Safety
 * As for `wspush_config_set_listen`.
 */
wspush_result wspush_config_set_path(struct wspush_config *config, const char *path, size_t path_len);

/**
 * Only upgrades whose Origin header equals one of the added origins are accepted (others get
 * 403). With none added (default), any Origin is accepted. E.g. "https://mail.example.com".
 * At most WSPUSH_MAX_ARG_LEN bytes (else INVALID_ARGUMENT).
 *
 * # Safety
 * As for `wspush_config_set_listen`.
 */
wspush_result wspush_config_add_allowed_origin(struct wspush_config *config,
                                               const char *origin,
                                               size_t origin_len);

/**
 * Number of I/O threads, at most 255; 0 (default) means one per available core.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_threads(struct wspush_config *config, size_t threads);

/**
 * Turns on the built-in JSON Web Token authentication with this HS256 secret (`secret_len`
 * bytes, 32 to WSPUSH_MAX_ARG_LEN, copied; INVALID_ARGUMENT otherwise). The token is read from an
 * `Authorization: Bearer` header, else from the `token` query parameter; it must be signed with
 * HS256 (any other alg, "none" included, is refused), carry `exp` (enforced, as is `nbf`, with
 * the leeway of `wspush_config_set_jwt_leeway_ms`) and a `sub` of 1-255 bytes without NUL. Without an
 * `on_upgrade` callback, a valid token is accepted as user `sub` and anything else gets 401
 * "invalid token"; with one, the callback decides and reads the verified `sub` with
 * `wspush_request_verified_user`.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread; `secret` NULL or
 * `secret_len` readable bytes.
 */
wspush_result wspush_config_set_jwt_hs256_secret(struct wspush_config *config,
                                                 const uint8_t *secret,
                                                 size_t secret_len);

/**
 * Clock skew (ms) allowed when checking a token's `exp` and `nbf` (default 30,000).
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_jwt_leeway_ms(struct wspush_config *config, uint64_t leeway_ms);

/**
 * Stack size in bytes of each engine I/O thread, where every callback runs: 0 (default) means
 * 8 MiB, what glibc gives an ordinary thread, so callback code that recurses deeply (e.g. an
 * interpreter's) has the stack it would have on the host's own threads. Otherwise at least
 * 64 KiB (else INVALID_ARGUMENT). Untouched stack pages are never committed: a larger stack
 * costs address space, not memory. A size the system cannot give makes `wspush_server_start`
 * fail with IO.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_thread_stack_size(struct wspush_config *config, size_t bytes);

/**
 * Behind a load balancer: with `enabled`, connections from a trusted proxy (see
 * `wspush_config_add_trusted_proxy`; add at least one first, else INVALID_ARGUMENT) must open
 * with a PROXY protocol header, v1 or v2 (HAProxy `send-proxy`/`send-proxy-v2`, nginx
 * `proxy_protocol on`, cloud TCP balancers), else they get 400. The client address it carries
 * is what per-address limits count and what `wspush_request_peer` returns. Other sources are
 * served directly; a PROXY header from them gets 400. Default: off.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_proxy_protocol(struct wspush_config *config, bool enabled);

/**
 * Adds a source allowed to send PROXY headers: an address ("127.0.0.1", "::1") or a CIDR
 * network ("10.0.0.0/8", "fd00::/8"), UTF-8, at most WSPUSH_MAX_ADDRESS_LEN bytes. Anything
 * else is INVALID_ADDRESS.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread; `network` NULL or
 * `network_len` readable bytes.
 */
wspush_result wspush_config_add_trusted_proxy(struct wspush_config *config,
                                              const char *network,
                                              size_t network_len);

/**
 * Copies the host's callbacks (and userdata) into the configuration, replacing earlier ones.
 * `callbacks->size` must be at least `offsetof(wspush_callbacks, on_upgrade)`, else
 * INVALID_ARGUMENT; fields past `size` count as NULL.
 *
 * # Safety
 * `config` must be NULL or a live configuration; `callbacks` must be NULL or point to
 * `callbacks->size` readable bytes laid out as `wspush_callbacks`, whose non-NULL function
 * pointers stay callable until every server started with this configuration is freed.
 */
wspush_result wspush_config_set_callbacks(struct wspush_config *config,
                                          const struct wspush_callbacks *callbacks);

/**
 * SO_SNDBUF and SO_RCVBUF of every connection's socket, in bytes; 0 (default) keeps the
 * kernel's autotuning. Smaller buffers save kernel memory per connection (several KiB each at
 * millions of connections) at the cost of throughput per connection.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_socket_buffers(struct wspush_config *config,
                                               size_t send_bytes,
                                               size_t recv_bytes);

/**
 * Per-user history, for clients speaking the `wspush.v1` subprotocol (bindings/js/PROTOCOL.md):
 * the last `messages` messages published to each user are kept and numbered (offsets 1, 2, 3,
 * ... per user, whether or not the user has a connection), and a client that reconnects with
 * `since=EPOCH:OFFSET` in its upgrade URL is sent what it missed. 0 (default) turns history
 * off: nothing is kept and `wspush_publish_with_offset` reports offset 0. Connections cost
 * nothing more with it on; each user published to costs one stream. See also
 * `wspush_config_set_history_ttl_ms` and `wspush_config_set_history_max_bytes`.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_history_max_messages(struct wspush_config *config, size_t messages);

/**
 * How long (ms, > 0; default 600,000) a message stays in a user's history. Kept in whole
 * seconds, rounded up. A user's stream whose newest message has expired is dropped, and the
 * next publish to that user starts a new epoch (a client resuming across it is told it did not
 * recover).
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_history_ttl_ms(struct wspush_config *config, uint64_t ttl_ms);

/**
 * Bytes all users' histories together may take, payloads plus bookkeeping (the `history_bytes`
 * stat; > 0, default 64 MiB). Past it the least recently published users' streams are dropped
 * whole (their next publish starts a new epoch).
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_history_max_bytes(struct wspush_config *config, size_t bytes);

/**
 * Several nodes sharing users through Redis (README, "Running several nodes"): the URL
 * `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, `url_len` bytes of UTF-8 (no NUL needed;
 * length 0 turns Redis off, the default). A publish on any node then reaches the user's
 * connections on every node, `wspush_publish` only queues it (see `wspush_publish_wait` and
 * `wspush_publish_async` for its outcome), and history (when on) is kept in Redis
 * (`wspush_config_set_history_max_bytes` does not apply; Redis's maxmemory does). INVALID_ARGUMENT
 * when the URL is malformed or longer than WSPUSH_MAX_ARG_LEN.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread; `url` NULL or
 * readable for `url_len` bytes.
 */
wspush_result wspush_config_set_redis_url(struct wspush_config *config, const char *url, size_t url_len);

/**
 * How long (ms, at least 10; default 2,000) Redis may take to answer before a publish fails
 * with UNAVAILABLE (and a waiting `wspush.v1` connection is closed with 1013 to retry), and
 * the connection to Redis is remade.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_redis_timeout_ms(struct wspush_config *config, uint64_t timeout_ms);

/**
 * Open plus handshaking connections beyond which new sockets get 503 (must be > 0).
 * `wspush_server_start` grows the process's descriptor table to hold this many more descriptors
 * (capped by RLIMIT_NOFILE), so a connection storm never stalls on the kernel doubling it.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_max_connections(struct wspush_config *config, size_t max_connections);

/**
 * Largest message a client may send, after reassembly (must be > 0); larger closes with 1009.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_max_message_size(struct wspush_config *config, size_t bytes);

/**
 * A connection silent this long (ms, > 0) is sent a ping.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_ping_interval_ms(struct wspush_config *config, uint64_t ping_interval_ms);

/**
 * A connection silent this long (ms, > 0) is closed with 1006: the peer is gone.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_idle_timeout_ms(struct wspush_config *config, uint64_t idle_timeout_ms);

/**
 * Time (ms, > 0) from accept to a completed upgrade, including a deferred decision.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_handshake_timeout_ms(struct wspush_config *config,
                                                     uint64_t handshake_timeout_ms);

/**
 * Cap on bytes queued for one connection that its socket has not taken yet; what happens
 * beyond it is the slow-consumer policy. Also the largest payload publish/send accept
 * (larger: MESSAGE_TOO_LARGE).
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_max_queue_bytes(struct wspush_config *config, size_t bytes);

/**
 * Largest HTTP request head (request line plus headers), at least 256; larger gets 431.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_max_header_bytes(struct wspush_config *config, size_t bytes);

/**
 * Handshakes in progress per I/O thread (> 0) beyond which that thread pauses accepting, so
 * a reconnect storm waits in the kernel's backlog.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_max_handshakes_per_thread(struct wspush_config *config, size_t handshakes);

/**
 * Connections one user may hold at once (the next is rejected with 429); 0 = no limit.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_max_connections_per_user(struct wspush_config *config, size_t connections);

/**
 * Connections (open or handshaking) one client IP address may hold, IPv6 counted per /64;
 * beyond, new sockets from it get 429. 0 (default) = no limit.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_max_connections_per_ip(struct wspush_config *config, size_t connections);

/**
 * New connections one client IP address (IPv6: /64) may open per second, in bursts of at most
 * that many; beyond, new sockets from it get 429. 0 (default) = no limit.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_max_handshakes_per_ip_per_sec(struct wspush_config *config,
                                                              uint32_t handshakes);

/**
 * How long (ms) a graceful stop waits for queued data and close handshakes.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_drain_timeout_ms(struct wspush_config *config, uint64_t drain_timeout_ms);

/**
 * How long (ms) a connection being closed waits for the peer's close frame.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_close_timeout_ms(struct wspush_config *config, uint64_t close_timeout_ms);

/**
 * `WSPUSH_SLOW_CONSUMER_CLOSE` (default) or `WSPUSH_SLOW_CONSUMER_DROP`; other values give
 * INVALID_ARGUMENT.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_slow_consumer_policy(struct wspush_config *config,
                                                     wspush_slow_consumer_policy policy);

/**
 * Time (ms, > 0; default 5000) a client has to complete a frame or a fragmented message once it
 * has started sending it; then the connection is closed with 1008, so parked half-frames can't
 * pin memory until the idle timeout.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_message_timeout_ms(struct wspush_config *config, uint64_t message_timeout_ms);

/**
 * Bytes all connections together may hold for incomplete frames and messages (default
 * 256 MiB); the connection whose input would pass it is closed with 1013 (try again later).
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_max_partial_input_bytes(struct wspush_config *config, size_t bytes);

/**
 * Handshakes in progress (accepted, not yet upgraded) one client address (IPv6: /64) may have;
 * beyond, new sockets from it get 429. 0 (default) = no limit.
 *
 * # Safety
 * `config` must be NULL or a live configuration not used by another thread.
 */
wspush_result wspush_config_set_max_pending_handshakes_per_ip(struct wspush_config *config,
                                                              size_t handshakes);

/**
 * The request method, e.g. "GET".
 *
 * # Safety
 * `request` must be NULL or the request of a running callback; `value` and `value_len` NULL or
 * writable.
 */
wspush_result wspush_request_method(const struct wspush_request *request,
                                    const char **value,
                                    size_t *value_len);

/**
 * The path of the request target without the query string, e.g. "/ws".
 *
 * # Safety
 * `request` must be NULL or the request of a running callback; `value` and `value_len` NULL or
 * writable.
 */
wspush_result wspush_request_path(const struct wspush_request *request,
                                  const char **value,
                                  size_t *value_len);

/**
 * The raw query string after '?' (not percent-decoded); empty (length 0) when there is none.
 *
 * # Safety
 * `request` must be NULL or the request of a running callback; `value` and `value_len` NULL or
 * writable.
 */
wspush_result wspush_request_query(const struct wspush_request *request,
                                   const char **value,
                                   size_t *value_len);

/**
 * The client's address as text, "ip:port" ("[v6]:port" for IPv6): the socket's peer, or, from
 * a trusted load balancer with `wspush_config_set_proxy_protocol`, the address its PROXY header
 * gave. NOT_FOUND when the socket no longer has one.
 *
 * # Safety
 * `request` must be NULL or the request of a running callback; `value` and `value_len` NULL or
 * writable.
 */
wspush_result wspush_request_peer(const struct wspush_request *request,
                                  const char **value,
                                  size_t *value_len);

/**
 * The value of the first query parameter called `name` (`name_len` bytes, UTF-8), as sent
 * (not percent-decoded); a parameter without '=' has the empty value. NOT_FOUND if absent;
 * INVALID_ARGUMENT when `name_len` passes WSPUSH_MAX_ARG_LEN (checked before reading).
 *
 * # Safety
 * `request` must be NULL or the request of a running callback; `name` must be NULL or point to
 * `name_len` readable bytes; the out-parameters must be NULL or valid for writes.
 */
wspush_result wspush_request_query_param(const struct wspush_request *request,
                                         const char *name,
                                         size_t name_len,
                                         const char **value,
                                         size_t *value_len);

/**
 * The value (raw bytes) of the first header called `name` (case-insensitive). NOT_FOUND if
 * absent; INVALID_ARGUMENT when `name_len` passes WSPUSH_MAX_ARG_LEN (checked before reading).
 *
 * # Safety
 * As for `wspush_request_query_param`.
 */
wspush_result wspush_request_header(const struct wspush_request *request,
                                    const char *name,
                                    size_t name_len,
                                    const uint8_t **value,
                                    size_t *value_len);

/**
 * How many headers the request has (for `wspush_request_header_at`).
 *
 * # Safety
 * `request` must be NULL or the request of a running callback; `count` NULL or writable.
 */
wspush_result wspush_request_header_count(const struct wspush_request *request, size_t *count);

/**
 * The header at `index` (0-based, in the order received): its name and raw value. NOT_FOUND
 * when `index` is not below the header count.
 *
 * # Safety
 * `request` must be NULL or the request of a running callback; the out-parameters must be NULL
 * or valid for writes.
 */
wspush_result wspush_request_header_at(const struct wspush_request *request,
                                       size_t index,
                                       const char **name,
                                       size_t *name_len,
                                       const uint8_t **value,
                                       size_t *value_len);

/**
 * The ticket of this pending upgrade: pass it to `wspush_upgrade_accept`/`_reject` after
 * deferring. It becomes the connection's ID once accepted.
 *
 * # Safety
 * `request` must be NULL or the request of a running callback; `ticket` NULL or writable.
 */
wspush_result wspush_request_ticket(const struct wspush_request *request, uint64_t *ticket);

/**
 * The user ID (`sub` claim) of the valid JSON Web Token this request carries (see
 * `wspush_config_set_jwt_hs256_secret`), borrowed for the callback. NOT_FOUND without a
 * configured secret, without a token, or when the token is invalid.
 *
 * # Safety
 * `request` must be NULL or the request of a running callback; the out-parameters NULL or
 * valid for writes.
 */
wspush_result wspush_request_verified_user(const struct wspush_request *request,
                                           const uint8_t **user,
                                           size_t *user_len);

/**
 * In `on_upgrade`: accept the connection as `user` (1-255 bytes, no NUL byte, copied).
 * INVALID_USER_ID for another length or a NUL (the decision is then unchanged); INVALID_ARGUMENT in `on_http`. The last
 * accept/reject/defer call of the callback wins.
 *
 * # Safety
 * `request` must be NULL or the request of a running callback; `user` NULL or `user_len`
 * readable bytes.
 */
wspush_result wspush_request_accept(struct wspush_request *request,
                                    const uint8_t *user,
                                    size_t user_len);

/**
 * In `on_upgrade`: refuse with HTTP `status` (400-599, else INVALID_STATUS) and close.
 *
 * # Safety
 * `request` must be NULL or the request of a running callback.
 */
wspush_result wspush_request_reject(struct wspush_request *request, uint16_t status);

/**
 * In `on_upgrade`: decide later, from any thread, with `wspush_upgrade_accept(server, ticket,
 * ...)` or `wspush_upgrade_reject`. `*ticket` receives the ticket. The handshake timeout still
 * applies: undecided requests are closed when it passes.
 *
 * # Safety
 * `request` must be NULL or the request of a running callback; `ticket` NULL or writable.
 */
wspush_result wspush_request_defer(struct wspush_request *request, uint64_t *ticket);

/**
 * In `on_http`: answer with `status` (200-599, else INVALID_STATUS), a Content-Type (printable
 * ASCII, 1 to WSPUSH_MAX_ARG_LEN bytes, else INVALID_ARGUMENT) and a body (at most
 * max_queue_bytes, else MESSAGE_TOO_LARGE); all copied. INVALID_ARGUMENT in `on_upgrade`.
 *
 * # Safety
 * `request` must be NULL or the request of a running callback; `content_type` and `body` NULL
 * or readable for their lengths.
 */
wspush_result wspush_request_respond(struct wspush_request *request,
                                     uint16_t status,
                                     const char *content_type,
                                     size_t content_type_len,
                                     const uint8_t *body,
                                     size_t body_len);

/**
 * This library's version, e.g. "0.1.0" (static, NUL-terminated).
 */
const char *wspush_version(void);

/**
 * A short English description of a result code (static, NUL-terminated); unknown codes get
 * "unknown result code". Never NULL.
 */
const char *wspush_result_str(uint32_t result);

/**
 * Binds the listening socket(s) and starts the I/O threads with a copy of `config` (which the
 * host still owns and may free right away). On success `*server` receives the server; release
 * it with `wspush_server_free`. Callbacks may run before this returns.
 * Errors: NULL_ARGUMENT, INVALID_ARGUMENT (a configuration value), INVALID_ADDRESS (host does
 * not resolve), BIND_FAILED (e.g. port in use), IO (threads or pollers).
 *
 * # Safety
 * `config` must be NULL or a live configuration; `server` NULL or writable.
 */
wspush_result wspush_server_start(const struct wspush_config *config, const struct wspush_server **server);

/**
 * The port the server listens on (useful after listening on port 0).
 *
 * # Safety
 * `server` must be NULL or a live server; `port` NULL or writable.
 */
wspush_result wspush_server_local_port(const struct wspush_server *server, uint16_t *port);

/**
 * Graceful stop: stop accepting, close every connection with 1001, flush for up to the drain
 * timeout, call `on_close` for every open connection, then end the I/O threads. Blocks until
 * all that is done, except when called from inside a callback: then it only starts the stop
 * and returns (an I/O thread cannot wait for itself). Calling it again is harmless; while
 * another thread is still inside a stop of the same server, it may return before that stop has
 * finished. Returns OK, also when called again (from any thread); NULL_ARGUMENT for NULL.
 * After it, publish/broadcast/send/close/disconnect/upgrade_* return STOPPED (argument errors
 * such as NULL_ARGUMENT or INVALID_USER_ID are still reported first); stats and local_port
 * keep working until `wspush_server_free`.
 *
 * # Safety
 * `server` must be NULL or a live server.
 */
wspush_result wspush_server_stop(const struct wspush_server *server);

/**
 * Stops the server (as `wspush_server_stop`, waiting for the I/O threads) and releases it.
 * NULL is a no-op returning OK. After it returns no callback runs any more, so `userdata` may be
 * released. Returns IN_CALLBACK, doing nothing, when called from a callback of this same server
 * (call `wspush_server_stop` there and free from another thread). The pointer must not be used
 * afterwards, by any thread: freeing twice is undefined behaviour.
 *
 * # Safety
 * `server` must be NULL or a live server that no other thread uses any more.
 */
wspush_result wspush_server_free(const struct wspush_server *server);

/**
 * Sends `payload` to every open connection of `user` (1-255 bytes, no NUL). `*delivered` (optional,
 * may be NULL) receives how many connections it was queued to, 0 when the user has none. With
 * history on, the message also takes the next offset of the user's stream (see
 * `wspush_publish_with_offset`, which tells it).
 * With Redis (`wspush_config_set_redis_url`) the message is queued for Redis, which sends it
 * to the user's connections on every node, and this returns at once with `*delivered` 0 (and
 * offset 0): `wspush_publish_wait` and `wspush_publish_async` tell the outcome.
 * Errors: NULL_ARGUMENT, INVALID_USER_ID, INVALID_ARGUMENT (kind), MESSAGE_TOO_LARGE (payload
 * larger than max_queue_bytes), STOPPED; with Redis also UNAVAILABLE (Redis unreachable for
 * longer than its timeout, or too much already waits for it).
 *
 * # Safety
 * `server` must be NULL or a live server; `user` and `payload` NULL or readable for their
 * lengths; `delivered` NULL or writable.
 */
wspush_result wspush_publish(const struct wspush_server *server,
                             const uint8_t *user,
                             size_t user_len,
                             const uint8_t *payload,
                             size_t payload_len,
                             wspush_message_kind kind,
                             size_t *delivered);

/**
 * `wspush_publish`, also telling the message's offset in the user's history stream:
 * `*offset` (optional, may be NULL) receives it: 1, 2, 3, ... per user, assigned whether or not
 * the user has a connection (a `wspush.v1` client that reconnects with `since` gets the message
 * then), and from 1 again when the user's stream starts a new epoch (expired or evicted). It
 * receives 0 when history is off (`wspush_config_set_history_max_messages`, default off), and
 * never 0 otherwise. `*delivered` (optional, may be NULL) as for `wspush_publish`. Errors as for
 * `wspush_publish`; neither out-parameter is written on an error.
 *
 * # Safety
 * `server` must be NULL or a live server; `user` and `payload` NULL or readable for their
 * lengths; `delivered` and `offset` NULL or writable.
 */
wspush_result wspush_publish_with_offset(const struct wspush_server *server,
                                         const uint8_t *user,
                                         size_t user_len,
                                         const uint8_t *payload,
                                         size_t payload_len,
                                         wspush_message_kind kind,
                                         size_t *delivered,
                                         uint64_t *offset);

/**
 * Publishes like `wspush_publish` and waits for the outcome, at most `timeout_ms`
 * milliseconds and never longer than the Redis timeout. With Redis
 * (`wspush_config_set_redis_url`) `*delivered` receives the number of NODES that hold a
 * connection of the user (each got the message from Redis) and `*offset` the message's offset
 * in the user's stream (0 with history off); both optional. Without Redis it is
 * `wspush_publish_with_offset`. Errors as for `wspush_publish`, plus UNAVAILABLE (Redis did not
 * confirm in time or is unreachable: the message may still be applied) and IN_CALLBACK when
 * called from a `wspush_publish_done_fn` of this server (it would wait for its own thread).
 * Blocks the calling thread: call it from the host's threads.
 *
 * # Safety
 * As for `wspush_publish_with_offset`.
 */
wspush_result wspush_publish_wait(const struct wspush_server *server,
                                  const uint8_t *user,
                                  size_t user_len,
                                  const uint8_t *payload,
                                  size_t payload_len,
                                  wspush_message_kind kind,
                                  uint64_t timeout_ms,
                                  size_t *delivered,
                                  uint64_t *offset);

/**
 * Publishes like `wspush_publish` without waiting, and calls `done(userdata, result, delivered,
 * offset)` exactly once with the outcome (see `wspush_publish_done_fn` for which thread and
 * what `delivered` counts). Returns OK when the publish was accepted (then `done` will be
 * called), or an error as for `wspush_publish` plus UNAVAILABLE when Redis is known to be
 * unreachable or too much already waits for it (then `done` is not called). `done` must not be
 * NULL; `userdata` must stay valid until `done` ran and be usable from that thread.
 *
 * # Safety
 * As for `wspush_publish`; `done` must be a function with the `wspush_publish_done_fn`
 * signature.
 */
wspush_result wspush_publish_async(const struct wspush_server *server,
                                   const uint8_t *user,
                                   size_t user_len,
                                   const uint8_t *payload,
                                   size_t payload_len,
                                   wspush_message_kind kind,
                                   wspush_publish_done_fn done,
                                   void *userdata);

/**
 * Sends `payload` to every open connection. `*count` (optional) receives how many were open.
 * Errors: NULL_ARGUMENT, INVALID_ARGUMENT (kind), MESSAGE_TOO_LARGE, STOPPED.
 *
 * # Safety
 * `server` must be NULL or a live server; `payload` NULL or readable for `payload_len` bytes;
 * `count` NULL or writable.
 */
wspush_result wspush_broadcast(const struct wspush_server *server,
                               const uint8_t *payload,
                               size_t payload_len,
                               wspush_message_kind kind,
                               size_t *count);

/**
 * Sends `payload` to one connection. NOT_FOUND when it is not open (connection IDs are never
 * reused, so a stale ID cannot reach another connection).
 * Errors: NULL_ARGUMENT, INVALID_ARGUMENT (kind), MESSAGE_TOO_LARGE, NOT_FOUND, STOPPED.
 *
 * # Safety
 * `server` must be NULL or a live server; `payload` NULL or readable for `payload_len` bytes.
 */
wspush_result wspush_send(const struct wspush_server *server,
                          uint64_t conn,
                          const uint8_t *payload,
                          size_t payload_len,
                          wspush_message_kind kind);

/**
 * Starts the close handshake on one connection with `code` (1000-1003, 1007-1014, 3000-4999)
 * and a UTF-8 `reason` of at most 123 bytes (NULL/0 for none). `on_close` follows.
 * Errors: NULL_ARGUMENT, INVALID_CLOSE_CODE, INVALID_UTF8, INVALID_CLOSE_REASON, NOT_FOUND,
 * STOPPED.
 *
 * # Safety
 * `server` must be NULL or a live server; `reason` NULL or readable for `reason_len` bytes.
 */
wspush_result wspush_close(const struct wspush_server *server,
                           uint64_t conn,
                           uint16_t code,
                           const char *reason,
                           size_t reason_len);

/**
 * Closes every connection of `user` with `code`. `*count` (optional) receives how many.
 * Errors: NULL_ARGUMENT, INVALID_USER_ID (not 1-255 bytes, or a NUL), INVALID_CLOSE_CODE, STOPPED.
 *
 * # Safety
 * `server` must be NULL or a live server; `user` NULL or readable for `user_len` bytes; `count`
 * NULL or writable.
 */
wspush_result wspush_disconnect_user(const struct wspush_server *server,
                                     const uint8_t *user,
                                     size_t user_len,
                                     uint16_t code,
                                     size_t *count);

/**
 * Completes a deferred upgrade (see `wspush_request_defer`) by accepting it as `user`.
 * NOT_FOUND when no pending upgrade or connection has that ticket (unknown, timed out, client
 * gone). The decision is applied asynchronously: one for a ticket that is no longer waiting
 * (already decided) is ignored.
 * Errors: NULL_ARGUMENT, INVALID_USER_ID, NOT_FOUND, STOPPED.
 *
 * # Safety
 * `server` must be NULL or a live server; `user` NULL or readable for `user_len` bytes.
 */
wspush_result wspush_upgrade_accept(const struct wspush_server *server,
                                    uint64_t ticket,
                                    const uint8_t *user,
                                    size_t user_len);

/**
 * Completes a deferred upgrade by answering HTTP `status` (400-599, else INVALID_STATUS) and
 * closing. NOT_FOUND and late decisions as for `wspush_upgrade_accept`.
 *
 * # Safety
 * `server` must be NULL or a live server.
 */
wspush_result wspush_upgrade_reject(const struct wspush_server *server, uint64_t ticket, uint16_t status);

/**
 * Fills `*stats` with a snapshot, as many fields as `stats->size` covers. INVALID_ARGUMENT
 * when `stats->size` does not even cover the first counter. Works after stop too.
 *
 * # Safety
 * `server` must be NULL or a live server; `stats` NULL or valid for reads and writes of
 * `stats->size` bytes.
 */
wspush_result wspush_stats(const struct wspush_server *server, struct wspush_stats_snapshot *stats);

/**
 * How many values `wspush_stats_snapshot` holds in this library (after `size`). A host that
 * exports every value generically (e.g. as Prometheus text) loops up to this and describes each
 * with `wspush_stats_field`; value `i` is `(&snapshot.connections)[i]`, for `i` below what the
 * host's `size` covers.
 */
size_t wspush_stats_field_count(void);

/**
 * Describes value `index` of `wspush_stats_snapshot` (0 is `connections`, in struct order):
 * `*name` receives its field name, `*help` a one-line description (both static and
 * NUL-terminated), `*kind` whether it is a gauge or a counter. NOT_FOUND when `index` is
 * `wspush_stats_field_count()` or more; NULL_ARGUMENT for a NULL out-parameter.
 *
 * # Safety
 * `name`, `help` and `kind` must each be NULL or writable.
 */
wspush_result wspush_stats_field(size_t index, const char **name, const char **help, wspush_stat_kind *kind);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* WSPUSH_H */
