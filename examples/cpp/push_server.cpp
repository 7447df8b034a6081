/*
 * push_server: a small wspush host in C++17, the way a C++ mail server would hold the engine.
 *
 * Clients connect to ws://HOST:PORT/ws?user=alice&token=alice-secret (a toy credential table
 * stands in for real session checks) and are sent a welcome message. Lines on stdin of the form
 * "user<TAB>message" are published to every connection of that user. SIGINT/SIGTERM or the end
 * of stdin stops the server gracefully (clients get close code 1001); the exit status is then 0.
 * GET /health answers "ok". With WSPUSH_REDIS_URL=redis://HOST:PORT in the environment, several
 * push_server processes share users through Redis: a line published on any of them reaches the
 * user's tabs on all of them, and "delivered" then counts the processes (nodes) holding a tab.
 *
 * The RAII wrapper is examples/cpp/wspush.hpp (errors: setup throws wspush::Error, running calls
 * return std::error_code; see there).
 *
 * Build (after `cargo build --release`):
 *   g++ -std=c++17 -Wall -Wextra -Werror -Iinclude examples/cpp/push_server.cpp \
 *       -Ltarget/release -lwspush -Wl,-rpath,"$PWD/target/release" -o push_server
 * Run:
 *   ./push_server 127.0.0.1:8080
 */

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <string>
#include <string_view>

#include "wspush.hpp"

namespace {

// Everything the callbacks share. They run on several I/O threads at once: the table is
// read-only after start and the counters are atomics.
struct MailApp {
    // Toy credentials: a real server would check a session or a signed token here, or defer the
    // decision to a worker thread (UpgradeRequest::defer) if that needs the network.
    const std::map<std::string, std::string, std::less<>> tokens{{"alice", "alice-secret"}, {"bob", "bob-secret"}};
    std::atomic<unsigned long> opened{0};
    std::atomic<unsigned long> messages_in{0};

    bool token_is_valid(std::string_view user, std::string_view token) const {
        auto found = tokens.find(user);
        return found != tokens.end() && found->second == token;
    }
};

// printf-style logging keeps each line whole when several I/O threads log at once.
void log_line(const char *format, ...) __attribute__((format(printf, 1, 2)));
void log_line(const char *format, ...) {
    va_list args;
    va_start(args, format);
    std::vfprintf(stdout, format, args);
    va_end(args);
    std::fputc('\n', stdout);
}

int len(std::string_view text) { return static_cast<int>(text.size()); }

wspush::Handlers make_handlers(MailApp &app) {
    wspush::Handlers handlers;

    // Runs on an I/O thread: must be quick.
    handlers.on_upgrade = [&app](wspush::ServerRef, wspush::UpgradeRequest &request) {
        std::string_view peer = request.peer();
        auto user = request.query_param("user");
        if (!user || user->empty() || user->size() > WSPUSH_MAX_USER_ID_LEN) {
            log_line("reject %.*s: no user", len(peer), peer.data());
            request.reject(401);
            return;
        }
        auto token = request.query_param("token");
        if (!token || !app.token_is_valid(*user, *token)) {
            log_line("reject %.*s: bad token for %.*s", len(peer), peer.data(), len(*user), user->data());
            request.reject(401);
            return;
        }
        request.accept(*user);
    };

    handlers.on_open = [&app](wspush::ServerRef server, wspush::ConnId conn, std::string_view user) {
        app.opened.fetch_add(1);
        // Calling back into the server from a callback is allowed and does not block.
        std::error_code sent = server.send(conn, "welcome " + std::string(user));
        log_line("open conn=%llu user=%.*s welcome=%s", static_cast<unsigned long long>(conn), len(user), user.data(),
                 sent.message().c_str());
    };

    handlers.on_message = [&app](wspush::ServerRef, wspush::ConnId conn, std::string_view user,
                                 wspush::MessageKind kind, std::string_view payload) {
        app.messages_in.fetch_add(1);
        if (kind == wspush::MessageKind::Text) {
            log_line("message conn=%llu user=%.*s text=%.*s", static_cast<unsigned long long>(conn), len(user),
                     user.data(), len(payload), payload.data());
        } else {
            log_line("message conn=%llu user=%.*s binary=%zu bytes", static_cast<unsigned long long>(conn), len(user),
                     user.data(), payload.size());
        }
    };

    handlers.on_close = [](wspush::ServerRef, wspush::ConnId conn, std::string_view user, uint16_t code) {
        log_line("close conn=%llu user=%.*s code=%u", static_cast<unsigned long long>(conn), len(user), user.data(),
                 static_cast<unsigned>(code));
    };

    // A health check for the load balancer; anything else gets the default 426.
    handlers.on_http = [](wspush::ServerRef, wspush::HttpRequest &request) {
        if (request.path() == "/health") {
            request.respond(200, "text/plain", "ok\n");
        }
    };
    return handlers;
}

// Publishes one stdin line, "user<TAB>message".
void publish_line(const wspush::ServerRef &server, std::string_view line) {
    auto tab = line.find('\t');
    if (tab == std::string_view::npos) {
        std::fprintf(stderr, "expected user<TAB>message\n");
        return;
    }
    std::string_view user = line.substr(0, tab);
    size_t delivered = 0;
    uint64_t offset = 0;
    // Waits for Redis when there is one (WSPUSH_REDIS_URL); without, it returns at once.
    if (std::error_code failed =
            server.publish_wait(user, line.substr(tab + 1), std::chrono::seconds(1), &delivered, &offset)) {
        // E.g. an empty or too long user ID, or WSPUSH_RESULT_UNAVAILABLE (Redis did not confirm:
        // the message may still arrive): report it, keep serving.
        log_line("publish user=%.*s failed: %s:%d (%s)", len(user), user.data(), failed.category().name(),
                 failed.value(), failed.message().c_str());
        return;
    }
    log_line("publish user=%.*s delivered=%zu offset=%llu", len(user), user.data(), delivered,
             static_cast<unsigned long long>(offset));
}

// Publishes stdin lines until EOF or a signal arrives on `signals` (a signalfd): one poll on
// both, so a signal is seen at once without a polling timeout.
void publish_from_stdin(const wspush::ServerRef &server, int signals) {
    std::string pending;
    char buffer[64 * 1024];
    for (;;) {
        pollfd fds[2] = {{STDIN_FILENO, POLLIN, 0}, {signals, POLLIN, 0}};
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            std::perror("poll");
            return;
        }
        if (fds[1].revents & POLLIN) {
            signalfd_siginfo info{};
            if (read(signals, &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
                log_line("signal %s", strsignal(static_cast<int>(info.ssi_signo)));
            }
            return;
        }
        if (fds[0].revents == 0) {
            continue;
        }
        ssize_t got = read(STDIN_FILENO, buffer, sizeof buffer);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got <= 0) {
            return;  // end of input (or an unreadable stdin)
        }
        pending.append(buffer, static_cast<size_t>(got));
        size_t start = 0;
        for (size_t newline; (newline = pending.find('\n', start)) != std::string::npos; start = newline + 1) {
            std::string_view line(pending.data() + start, newline - start);
            if (!line.empty() && line.back() == '\r') {
                line.remove_suffix(1);
            }
            publish_line(server, line);
        }
        pending.erase(0, start);
    }
}

// Blocks SIGINT and SIGTERM in this thread (and so in every engine thread started after it) and
// returns a signalfd that receives them.
int block_stop_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    if (pthread_sigmask(SIG_BLOCK, &set, nullptr) != 0) {
        return -1;
    }
    return signalfd(-1, &set, SFD_CLOEXEC);
}

}  // namespace

int main(int argc, char **argv) {
    const char *listen_address = argc > 1 ? argv[1] : "127.0.0.1:8080";
    // Lines stay whole when stdout is a pipe.
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    log_line("wspush %s", wspush_version());

    // Before the server starts its threads, so that they inherit the blocked signals.
    int signals = block_stop_signals();
    if (signals < 0) {
        std::perror("signalfd");
        return 1;
    }

    // Declared before the server: the server's destructor (which waits for the callbacks) runs
    // first, so the callbacks never see a destroyed MailApp.
    MailApp app;
    try {
        wspush::Config config;
        config.listen(listen_address)
            .path("/ws")
            .max_connections_per_user(16)
            .drain_timeout(std::chrono::seconds(1))
            .history(100) // a tab that reconnects with wspush.v1 gets what it missed
            .handlers(make_handlers(app));
        if (const char *redis = std::getenv("WSPUSH_REDIS_URL"); redis != nullptr && *redis != '\0') {
            config.redis_url(redis).redis_timeout(std::chrono::milliseconds(500));
        }
        wspush::PushServer server = wspush::PushServer::start(std::move(config));
        log_line("listening on port %u", static_cast<unsigned>(server.port()));

        publish_from_stdin(server, signals);

        log_line("stopping");
        if (std::error_code stopped = server.stop()) {
            std::fprintf(stderr, "stop: %s\n", stopped.message().c_str());
        }
        wspush_stats_snapshot stats = server.stats();
        log_line("stats upgrades=%llu rejected=%llu messages_in=%llu messages_out=%llu",
                 static_cast<unsigned long long>(stats.upgrades_total),
                 static_cast<unsigned long long>(stats.rejected_total),
                 static_cast<unsigned long long>(stats.messages_in_total),
                 static_cast<unsigned long long>(stats.messages_out_total));
        // Leaving the scope frees the server; after that no callback runs any more.
    } catch (const wspush::Error &e) {
        // what() is "step: description"; the code's value is the stable wspush_result.
        std::fprintf(stderr, "push_server: %s [%s:%d]\n", e.what(), e.code().category().name(), e.code().value());
        if (e.code() == WSPUSH_RESULT_BIND_FAILED) {
            std::fprintf(stderr, "push_server: is another process listening on %s?\n", listen_address);
        }
        return 1;
    }
    log_line("stopped: %lu opened, %lu messages in", app.opened.load(), app.messages_in.load());
    close(signals);
    return 0;
}
