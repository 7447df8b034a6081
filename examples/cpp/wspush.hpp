// wspush.hpp: a small header-only C++17 wrapper over the C ABI in include/wspush.h.
//
// What it adds over the C header, and nothing more:
//   - wspush::Config    owns a wspush_config (builder style) and the host's callbacks, given as
//                       lambdas / std::function.
//   - wspush::PushServer owns the running `const wspush_server *`: non-copyable, movable; its
//                       destructor stops the server gracefully and frees it (wspush_server_free),
//                       then releases the callbacks, which no engine thread can run any more.
//   - wspush::ServerRef a non-owning view of the server with every thread-safe operation
//                       (publish, send, close, ...). Callbacks receive one: they may push through
//                       it, but cannot free the server they run in.
//   - UpgradeRequest / HttpRequest: the borrowed request of one callback, with string_view
//                       accessors.
//
// SEVERAL NODES (Redis): Config::redis_url makes several servers share users through Redis; a
// publish on any node reaches the user's connections on every node. ServerRef::publish then only
// queues the message (delivered 0); ServerRef::publish_wait waits for Redis and tells how many
// NODES hold a connection of the user and the message's offset. WSPUSH_RESULT_UNAVAILABLE means
// Redis did not confirm in time: the message may still be applied (a retry may deliver it twice).
// Without Redis publish_wait is publish_with_offset. For completions without blocking, call
// wspush_publish_async on ServerRef::raw() (its callback must not throw).
//
// ERRORS (a deliberate split):
//   - Setting up (Config setters, PushServer::start) throws wspush::Error, a std::system_error
//     whose code() is in wspush::category(): a bad listen address or a port in use is fatal at
//     startup and usually ends the program.
//   - Running operations (publish, send, close, stop, ...) are noexcept and return a
//     std::error_code: STOPPED during shutdown or NOT_FOUND for a connection that just went away
//     are routine outcomes, these calls are made from callbacks (where no exception may cross
//     into the engine), and the push path should not pay for exceptions.
//   Compare codes directly: `if (ec == WSPUSH_RESULT_STOPPED)`; ec.message() is
//   wspush_result_str().
//
// THREADING (from wspush.h): callbacks run on several engine I/O threads at once, so whatever the
// lambdas capture must be thread-safe and outlive the PushServer. A callback must be quick; an
// exception escaping one is caught here, reported on stderr, and (in on_upgrade / on_http)
// answered with 500, because exceptions must never unwind into the engine.
#ifndef WSPUSH_HPP
#define WSPUSH_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "wspush.h"

namespace wspush {

/// The error category of wspush_result codes; message() is wspush_result_str().
inline const std::error_category &category() noexcept {
    struct Category final : std::error_category {
        const char *name() const noexcept override { return "wspush"; }
        std::string message(int code) const override { return wspush_result_str(static_cast<uint32_t>(code)); }
    };
    static const Category instance;
    return instance;
}

}  // namespace wspush

// Lets a wspush_result convert to std::error_code and compare with one (found by ADL on the
// global enum).
inline std::error_code make_error_code(wspush_result result) noexcept {
    return {static_cast<int>(result), wspush::category()};
}
namespace std {
template <>
struct is_error_code_enum<wspush_result> : true_type {};
}  // namespace std

namespace wspush {

/// Thrown by the setup calls (Config setters, PushServer::start).
class Error : public std::system_error {
public:
    Error(wspush_result result, const std::string &what) : std::system_error(make_error_code(result), what) {}
};

namespace detail {

inline void check(wspush_result result, const char *what) {
    if (result != WSPUSH_RESULT_OK) {
        throw Error(result, what);
    }
}

inline const uint8_t *bytes(std::string_view text) noexcept { return reinterpret_cast<const uint8_t *>(text.data()); }

inline std::string_view view(const uint8_t *data, size_t len) noexcept {
    return {reinterpret_cast<const char *>(data), len};
}

/// A duration as the C API's milliseconds: negative counts as 0, longer than the library takes
/// as WSPUSH_MAX_TIMEOUT_MS.
inline uint64_t timeout_ms(std::chrono::milliseconds duration) noexcept {
    if (duration.count() < 0) {
        return 0;
    }
    return static_cast<uint64_t>(duration.count()) > WSPUSH_MAX_TIMEOUT_MS ? WSPUSH_MAX_TIMEOUT_MS
                                                                            : static_cast<uint64_t>(duration.count());
}

}  // namespace detail

enum class MessageKind : wspush_message_kind { Text = WSPUSH_MESSAGE_KIND_TEXT, Binary = WSPUSH_MESSAGE_KIND_BINARY };

using ConnId = uint64_t;

/// Non-owning handle to a running server: every call is thread-safe and never blocks on I/O.
class ServerRef {
public:
    explicit ServerRef(const wspush_server *server) noexcept : server_(server) {}

    /// Sends to every open connection of `user`; `delivered` (optional) gets how many.
    std::error_code publish(std::string_view user, std::string_view payload, size_t *delivered = nullptr,
                            MessageKind kind = MessageKind::Text) const noexcept {
        return wspush_publish(server_, detail::bytes(user), user.size(), detail::bytes(payload), payload.size(),
                              static_cast<wspush_message_kind>(kind), delivered);
    }

    /// `publish`, also telling the message's offset in the user's history stream (0 with history
    /// off; see Config::history): what a `wspush.v1` client that reconnects with `since` counts in.
    std::error_code publish_with_offset(std::string_view user, std::string_view payload, size_t *delivered,
                                        uint64_t *offset, MessageKind kind = MessageKind::Text) const noexcept {
        return wspush_publish_with_offset(server_, detail::bytes(user), user.size(), detail::bytes(payload),
                                          payload.size(), static_cast<wspush_message_kind>(kind), delivered, offset);
    }

    /// Publishes and waits for the outcome, at most `timeout` and never longer than the Redis
    /// timeout (Config::redis_timeout). With Redis (Config::redis_url) `delivered` (optional) gets
    /// the number of NODES holding a connection of `user`, each of which got the message, and
    /// `offset` (optional) its offset in the user's stream (0 with history off);
    /// WSPUSH_RESULT_UNAVAILABLE when Redis did not confirm in time or is unreachable (the
    /// message may still be applied). Without Redis it is `publish_with_offset` and does not
    /// wait. Blocks the calling thread: call it from the host's threads (in a connection
    /// callback it stalls that I/O thread meanwhile).
    std::error_code publish_wait(std::string_view user, std::string_view payload, std::chrono::milliseconds timeout,
                                 size_t *delivered = nullptr, uint64_t *offset = nullptr,
                                 MessageKind kind = MessageKind::Text) const noexcept {
        return wspush_publish_wait(server_, detail::bytes(user), user.size(), detail::bytes(payload), payload.size(),
                                   static_cast<wspush_message_kind>(kind), detail::timeout_ms(timeout), delivered,
                                   offset);
    }

    std::error_code broadcast(std::string_view payload, size_t *count = nullptr,
                              MessageKind kind = MessageKind::Text) const noexcept {
        return wspush_broadcast(server_, detail::bytes(payload), payload.size(), static_cast<wspush_message_kind>(kind),
                                count);
    }

    std::error_code send(ConnId conn, std::string_view payload, MessageKind kind = MessageKind::Text) const noexcept {
        return wspush_send(server_, conn, detail::bytes(payload), payload.size(),
                           static_cast<wspush_message_kind>(kind));
    }

    std::error_code close(ConnId conn, uint16_t code, std::string_view reason = {}) const noexcept {
        return wspush_close(server_, conn, code, reason.data(), reason.size());
    }

    std::error_code disconnect_user(std::string_view user, uint16_t code, size_t *count = nullptr) const noexcept {
        return wspush_disconnect_user(server_, detail::bytes(user), user.size(), code, count);
    }

    std::error_code accept_upgrade(uint64_t ticket, std::string_view user) const noexcept {
        return wspush_upgrade_accept(server_, ticket, detail::bytes(user), user.size());
    }

    std::error_code reject_upgrade(uint64_t ticket, uint16_t status) const noexcept {
        return wspush_upgrade_reject(server_, ticket, status);
    }

    /// The listening port (useful after listening on port 0); 0 if the server has none.
    uint16_t port() const noexcept {
        uint16_t port = 0;
        wspush_server_local_port(server_, &port);
        return port;
    }

    wspush_stats_snapshot stats() const noexcept {
        wspush_stats_snapshot stats{};
        stats.size = sizeof stats;
        wspush_stats(server_, &stats);
        return stats;
    }

    /// Graceful stop (close with 1001, drain); blocks until done except inside a callback.
    std::error_code stop() const noexcept { return wspush_server_stop(server_); }

    /// The C server, for calls this wrapper does not cover (e.g. wspush_publish_async).
    const wspush_server *raw() const noexcept { return server_; }

protected:
    const wspush_server *server_;
};

/// The request of one on_upgrade call. Borrowed: valid only during that callback, on its thread.
class UpgradeRequest {
public:
    explicit UpgradeRequest(wspush_request *request) noexcept : request_(request) {}
    UpgradeRequest(const UpgradeRequest &) = delete;
    UpgradeRequest &operator=(const UpgradeRequest &) = delete;

    /// The raw (not percent-decoded) value of the first query parameter `name`.
    std::optional<std::string_view> query_param(std::string_view name) const noexcept {
        const char *value = nullptr;
        size_t len = 0;
        if (wspush_request_query_param(request_, name.data(), name.size(), &value, &len) != WSPUSH_RESULT_OK) {
            return std::nullopt;
        }
        return std::string_view(value, len);
    }

    std::optional<std::string_view> header(std::string_view name) const noexcept {
        const uint8_t *value = nullptr;
        size_t len = 0;
        if (wspush_request_header(request_, name.data(), name.size(), &value, &len) != WSPUSH_RESULT_OK) {
            return std::nullopt;
        }
        return detail::view(value, len);
    }

    std::string_view path() const noexcept { return text(wspush_request_path); }
    std::string_view method() const noexcept { return text(wspush_request_method); }
    /// "ip:port", or empty when the socket no longer has a peer address.
    std::string_view peer() const noexcept { return text(wspush_request_peer); }

    /// Accept as `user` (1-255 bytes). The last accept/reject/defer of the callback wins.
    std::error_code accept(std::string_view user) noexcept {
        return wspush_request_accept(request_, detail::bytes(user), user.size());
    }
    std::error_code reject(uint16_t status) noexcept { return wspush_request_reject(request_, status); }
    /// Decide later from any thread with ServerRef::accept_upgrade / reject_upgrade(ticket).
    std::optional<uint64_t> defer() noexcept {
        uint64_t ticket = 0;
        if (wspush_request_defer(request_, &ticket) != WSPUSH_RESULT_OK) {
            return std::nullopt;
        }
        return ticket;
    }

protected:
    using TextAccessor = wspush_result (*)(const wspush_request *, const char **, size_t *);
    std::string_view text(TextAccessor accessor) const noexcept {
        const char *value = nullptr;
        size_t len = 0;
        return accessor(request_, &value, &len) == WSPUSH_RESULT_OK ? std::string_view(value, len)
                                                                    : std::string_view();
    }

    wspush_request *request_;
};

/// The request of one on_http call (plain HTTP, no upgrade): answer it with respond().
class HttpRequest : private UpgradeRequest {
public:
    using UpgradeRequest::header;
    using UpgradeRequest::method;
    using UpgradeRequest::path;
    using UpgradeRequest::peer;
    using UpgradeRequest::query_param;
    using UpgradeRequest::UpgradeRequest;

    /// Not answering gives the engine's default 426 Upgrade Required.
    std::error_code respond(uint16_t status, std::string_view content_type, std::string_view body) noexcept {
        return wspush_request_respond(request_, status, content_type.data(), content_type.size(),
                                      detail::bytes(body), body.size());
    }
};

/// The host's callbacks. Empty ones are skipped; without on_upgrade every upgrade gets 401.
struct Handlers {
    std::function<void(ServerRef, UpgradeRequest &)> on_upgrade;
    std::function<void(ServerRef, ConnId, std::string_view user)> on_open;
    std::function<void(ServerRef, ConnId, std::string_view user, MessageKind, std::string_view payload)> on_message;
    std::function<void(ServerRef, ConnId, std::string_view user, uint16_t code)> on_close;
    std::function<void(ServerRef, ConnId, std::string_view user, size_t dropped_bytes)> on_drop;
    std::function<void(ServerRef, HttpRequest &)> on_http;
};

namespace detail {

// The C entry points the engine calls. userdata is the Handlers owned by the PushServer.
// Each catches everything: an exception must never unwind into the engine.
extern "C" {

static void trampoline_on_upgrade(void *userdata, const wspush_server *server, wspush_request *request) {
    UpgradeRequest wrapped(request);
    try {
        static_cast<Handlers *>(userdata)->on_upgrade(ServerRef(server), wrapped);
    } catch (const std::exception &e) {
        std::fprintf(stderr, "wspush: on_upgrade threw: %s\n", e.what());
        wrapped.reject(500);
    } catch (...) {
        std::fprintf(stderr, "wspush: on_upgrade threw\n");
        wrapped.reject(500);
    }
}

static void trampoline_on_open(void *userdata, const wspush_server *server, uint64_t conn, const uint8_t *user,
                               size_t user_len) {
    try {
        static_cast<Handlers *>(userdata)->on_open(ServerRef(server), conn, view(user, user_len));
    } catch (...) {
        std::fprintf(stderr, "wspush: on_open threw\n");
    }
}

static void trampoline_on_message(void *userdata, const wspush_server *server, uint64_t conn, const uint8_t *user,
                                  size_t user_len, wspush_message_kind kind, const uint8_t *payload,
                                  size_t payload_len) {
    try {
        static_cast<Handlers *>(userdata)->on_message(ServerRef(server), conn, view(user, user_len),
                                                      static_cast<MessageKind>(kind), view(payload, payload_len));
    } catch (...) {
        std::fprintf(stderr, "wspush: on_message threw\n");
    }
}

static void trampoline_on_close(void *userdata, const wspush_server *server, uint64_t conn, const uint8_t *user,
                                size_t user_len, uint16_t code) {
    try {
        static_cast<Handlers *>(userdata)->on_close(ServerRef(server), conn, view(user, user_len), code);
    } catch (...) {
        std::fprintf(stderr, "wspush: on_close threw\n");
    }
}

static void trampoline_on_drop(void *userdata, const wspush_server *server, uint64_t conn, const uint8_t *user,
                               size_t user_len, size_t dropped_bytes) {
    try {
        static_cast<Handlers *>(userdata)->on_drop(ServerRef(server), conn, view(user, user_len), dropped_bytes);
    } catch (...) {
        std::fprintf(stderr, "wspush: on_drop threw\n");
    }
}

static void trampoline_on_http(void *userdata, const wspush_server *server, wspush_request *request) {
    HttpRequest wrapped(request);
    try {
        static_cast<Handlers *>(userdata)->on_http(ServerRef(server), wrapped);
    } catch (...) {
        std::fprintf(stderr, "wspush: on_http threw\n");
        wrapped.respond(500, "text/plain", "internal error\n");
    }
}

}  // extern "C"

}  // namespace detail

/// Server configuration (owns a wspush_config) plus the callbacks. Setters throw wspush::Error.
class Config {
public:
    Config() : config_(wspush_config_new()) {
        if (!config_) {
            throw Error(WSPUSH_RESULT_PANIC, "wspush_config_new");
        }
    }

    Config &listen(std::string_view address) {
        detail::check(wspush_config_set_listen(raw(), address.data(), address.size()), "listen address");
        return *this;
    }
    Config &path(std::string_view path) {
        detail::check(wspush_config_set_path(raw(), path.data(), path.size()), "path");
        return *this;
    }
    Config &allow_origin(std::string_view origin) {
        detail::check(wspush_config_add_allowed_origin(raw(), origin.data(), origin.size()), "allowed origin");
        return *this;
    }
    Config &threads(size_t threads) {
        detail::check(wspush_config_set_threads(raw(), threads), "threads");
        return *this;
    }
    Config &max_connections(size_t connections) {
        detail::check(wspush_config_set_max_connections(raw(), connections), "max connections");
        return *this;
    }
    Config &max_connections_per_user(size_t connections) {
        detail::check(wspush_config_set_max_connections_per_user(raw(), connections), "max connections per user");
        return *this;
    }
    Config &ping_interval(std::chrono::milliseconds interval) {
        detail::check(wspush_config_set_ping_interval_ms(raw(), millis(interval)), "ping interval");
        return *this;
    }
    Config &idle_timeout(std::chrono::milliseconds timeout) {
        detail::check(wspush_config_set_idle_timeout_ms(raw(), millis(timeout)), "idle timeout");
        return *this;
    }
    Config &drain_timeout(std::chrono::milliseconds timeout) {
        detail::check(wspush_config_set_drain_timeout_ms(raw(), millis(timeout)), "drain timeout");
        return *this;
    }
    /// Per-user history for `wspush.v1` clients that resume: the last `max_messages` per user
    /// (0 = off), each kept for `ttl`, all of them within `max_bytes`.
    Config &history(size_t max_messages, std::chrono::milliseconds ttl = std::chrono::minutes(10),
                    size_t max_bytes = 64u << 20) {
        detail::check(wspush_config_set_history_max_messages(raw(), max_messages), "history messages");
        detail::check(wspush_config_set_history_ttl_ms(raw(), millis(ttl)), "history ttl");
        detail::check(wspush_config_set_history_max_bytes(raw(), max_bytes), "history bytes");
        return *this;
    }
    /// Several nodes sharing users through Redis: `url` is
    /// "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]" (empty = off, the default). A publish on any
    /// node then reaches the user's connections on every node, history (when on) is kept in
    /// Redis, and `publish` only queues (see ServerRef::publish_wait). Throws (INVALID_ARGUMENT)
    /// for a malformed URL; the message never contains the URL (it may hold a password).
    Config &redis_url(std::string_view url) {
        detail::check(wspush_config_set_redis_url(raw(), url.data(), url.size()), "redis url");
        return *this;
    }
    /// How long Redis may take to answer before a publish fails with WSPUSH_RESULT_UNAVAILABLE
    /// and the connection to Redis is remade (default 2 s, at least 10 ms).
    Config &redis_timeout(std::chrono::milliseconds timeout) {
        detail::check(wspush_config_set_redis_timeout_ms(raw(), millis(timeout)), "redis timeout");
        return *this;
    }
    Config &handlers(Handlers handlers) {
        handlers_ = std::move(handlers);
        return *this;
    }

    /// For settings this wrapper does not cover: call the C setters on it directly.
    wspush_config *raw() noexcept { return config_.get(); }

private:
    friend class PushServer;

    static uint64_t millis(std::chrono::milliseconds duration) {
        // A negative count would wrap to a huge unsigned one; 0 is refused by the engine.
        return duration.count() < 0 ? 0 : static_cast<uint64_t>(duration.count());
    }

    struct Free {
        void operator()(wspush_config *config) const noexcept { wspush_config_free(config); }
    };
    std::unique_ptr<wspush_config, Free> config_;
    Handlers handlers_;
};

/// Owns a running server. Movable, not copyable; destroying it stops the server (graceful:
/// 1001 to every client, drain) and frees it. Never destroy it from inside one of its callbacks.
class PushServer : public ServerRef {
public:
    /// Starts a server from `config` (consumed: its callbacks move into the server).
    /// Throws wspush::Error (e.g. WSPUSH_RESULT_BIND_FAILED).
    static PushServer start(Config config) {
        // On the heap so that its address, the callbacks' userdata, survives moves of PushServer.
        auto handlers = std::make_unique<Handlers>(std::move(config.handlers_));
        wspush_callbacks callbacks{};
        callbacks.size = sizeof callbacks;
        callbacks.userdata = handlers.get();
        callbacks.on_upgrade = handlers->on_upgrade ? detail::trampoline_on_upgrade : nullptr;
        callbacks.on_open = handlers->on_open ? detail::trampoline_on_open : nullptr;
        callbacks.on_message = handlers->on_message ? detail::trampoline_on_message : nullptr;
        callbacks.on_close = handlers->on_close ? detail::trampoline_on_close : nullptr;
        callbacks.on_drop = handlers->on_drop ? detail::trampoline_on_drop : nullptr;
        callbacks.on_http = handlers->on_http ? detail::trampoline_on_http : nullptr;
        detail::check(wspush_config_set_callbacks(config.raw(), &callbacks), "callbacks");
        const wspush_server *server = nullptr;
        detail::check(wspush_server_start(config.raw(), &server), "start");
        return PushServer(server, std::move(handlers));
    }

    PushServer(const PushServer &) = delete;
    PushServer &operator=(const PushServer &) = delete;

    PushServer(PushServer &&other) noexcept
        : ServerRef(std::exchange(other.server_, nullptr)), handlers_(std::move(other.handlers_)) {}

    PushServer &operator=(PushServer &&other) noexcept {
        if (this != &other) {
            release();
            server_ = std::exchange(other.server_, nullptr);
            handlers_ = std::move(other.handlers_);
        }
        return *this;
    }

    ~PushServer() { release(); }

    /// Whether this object still owns a server (false after being moved from).
    explicit operator bool() const noexcept { return server_ != nullptr; }

private:
    PushServer(const wspush_server *server, std::unique_ptr<Handlers> handlers) noexcept
        : ServerRef(server), handlers_(std::move(handlers)) {}

    void release() noexcept {
        if (server_ != nullptr) {
            // Stops and waits for the I/O threads: afterwards no callback can use handlers_.
            wspush_result result = wspush_server_free(std::exchange(server_, nullptr));
            if (result != WSPUSH_RESULT_OK) {
                // E.g. IN_CALLBACK: the server still runs and may still call the handlers, so
                // leaking them is the only safe choice.
                std::fprintf(stderr, "wspush_server_free: %s\n", wspush_result_str(result));
                static_cast<void>(handlers_.release());
                return;
            }
        }
        handlers_.reset();
    }

    std::unique_ptr<Handlers> handlers_;
};

}  // namespace wspush

#endif  // WSPUSH_HPP
