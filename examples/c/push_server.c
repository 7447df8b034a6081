/*
 * push_server: a small wspush host in C.
 *
 * Clients connect to ws://HOST:PORT/ws?user=alice&token=alice-secret (a toy credential table
 * stands in for real session checks). Each new connection is sent a welcome message. Lines on
 * stdin of the form "user<TAB>message" are published to every connection of that user. The
 * server runs until stdin ends or SIGINT/SIGTERM arrives, then stops gracefully (clients get
 * close code 1001) and exits 0. GET /health answers "ok".
 *
 * Build (after `cargo build`):
 *   gcc -std=c11 -Wall -Wextra -Werror -pedantic -Iinclude examples/c/push_server.c \
 *       -Ltarget/debug -lwspush -Wl,-rpath,"$PWD/target/debug" -o push_server
 * Run:
 *   ./push_server 127.0.0.1:8080
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wspush.h"

/* Toy credentials: a real host would verify a session cookie or a signed token here, or defer
 * the decision to a worker thread (wspush_request_defer) if that needs the network. */
static const struct {
    const char *user;
    const char *token;
} ACCOUNTS[] = {
    {"alice", "alice-secret"},
    {"bob", "bob-secret"},
};

/* Shared by all I/O threads through userdata, hence atomics. */
struct app {
    atomic_ulong opened;
    atomic_ulong messages_in;
};

static volatile sig_atomic_t stop_requested = 0;

static void on_signal(int signal_number) {
    (void)signal_number;
    stop_requested = 1;
}

static int same_text(const char *text, size_t len, const char *expected) {
    return len == strlen(expected) && memcmp(text, expected, len) == 0;
}

static int token_is_valid(const char *user, size_t user_len, const char *token, size_t token_len) {
    size_t i;
    for (i = 0; i < sizeof ACCOUNTS / sizeof ACCOUNTS[0]; i++) {
        if (same_text(user, user_len, ACCOUNTS[i].user)) {
            return same_text(token, token_len, ACCOUNTS[i].token);
        }
    }
    return 0;
}

/* Runs on an I/O thread: must be quick. Strings from the request are not NUL-terminated. */
static void on_upgrade(void *userdata, const wspush_server *server, wspush_request *request) {
    const char *user, *token, *peer = "?";
    size_t user_len, token_len, peer_len = 1;
    (void)userdata;
    (void)server;
    wspush_request_peer(request, &peer, &peer_len);
    if (wspush_request_query_param(request, "user", 4, &user, &user_len) != WSPUSH_RESULT_OK || user_len == 0 ||
        user_len > WSPUSH_MAX_USER_ID_LEN) {
        printf("reject %.*s: no user\n", (int)peer_len, peer);
        wspush_request_reject(request, 401);
        return;
    }
    if (wspush_request_query_param(request, "token", 5, &token, &token_len) != WSPUSH_RESULT_OK ||
        !token_is_valid(user, user_len, token, token_len)) {
        printf("reject %.*s: bad token for %.*s\n", (int)peer_len, peer, (int)user_len, user);
        wspush_request_reject(request, 401);
        return;
    }
    wspush_request_accept(request, (const uint8_t *)user, user_len);
}

static void on_open(void *userdata, const wspush_server *server, uint64_t conn, const uint8_t *user,
                    size_t user_len) {
    struct app *app = userdata;
    char welcome[300];
    int len = snprintf(welcome, sizeof welcome, "welcome %.*s", (int)user_len, (const char *)user);
    wspush_result result;
    atomic_fetch_add(&app->opened, 1);
    /* Calling back into wspush from a callback is allowed (and does not block). */
    result = wspush_send(server, conn, (const uint8_t *)welcome, (size_t)len, WSPUSH_MESSAGE_KIND_TEXT);
    printf("open conn=%" PRIu64 " user=%.*s welcome=%s\n", conn, (int)user_len, (const char *)user,
           wspush_result_str(result));
}

static void on_message(void *userdata, const wspush_server *server, uint64_t conn, const uint8_t *user,
                       size_t user_len, wspush_message_kind kind, const uint8_t *payload, size_t payload_len) {
    struct app *app = userdata;
    (void)server;
    atomic_fetch_add(&app->messages_in, 1);
    if (kind == WSPUSH_MESSAGE_KIND_TEXT) {
        printf("message conn=%" PRIu64 " user=%.*s text=%.*s\n", conn, (int)user_len, (const char *)user,
               (int)payload_len, (const char *)payload);
    } else {
        printf("message conn=%" PRIu64 " user=%.*s binary=%zu bytes\n", conn, (int)user_len, (const char *)user,
               payload_len);
    }
}

static void on_close(void *userdata, const wspush_server *server, uint64_t conn, const uint8_t *user,
                     size_t user_len, uint16_t code) {
    (void)userdata;
    (void)server;
    printf("close conn=%" PRIu64 " user=%.*s code=%u\n", conn, (int)user_len, (const char *)user, (unsigned)code);
}

static void on_drop(void *userdata, const wspush_server *server, uint64_t conn, const uint8_t *user,
                    size_t user_len, size_t dropped_bytes) {
    (void)userdata;
    (void)server;
    printf("drop conn=%" PRIu64 " user=%.*s bytes=%zu\n", conn, (int)user_len, (const char *)user, dropped_bytes);
}

/* Plain HTTP: a health check for the load balancer; anything else gets the default 426. */
static void on_http(void *userdata, const wspush_server *server, wspush_request *request) {
    const char *path;
    size_t path_len;
    (void)userdata;
    (void)server;
    if (wspush_request_path(request, &path, &path_len) == WSPUSH_RESULT_OK && same_text(path, path_len, "/health")) {
        wspush_request_respond(request, 200, "text/plain", 10, (const uint8_t *)"ok\n", 3);
    }
}

/* Publishes one stdin line, "user<TAB>message". */
static void publish_line(const wspush_server *server, char *line, size_t len) {
    char *tab = memchr(line, '\t', len);
    size_t user_len, delivered = 0;
    wspush_result result;
    if (tab == NULL) {
        fprintf(stderr, "expected user<TAB>message\n");
        return;
    }
    user_len = (size_t)(tab - line);
    result = wspush_publish(server, (const uint8_t *)line, user_len, (const uint8_t *)(tab + 1), len - user_len - 1,
                            WSPUSH_MESSAGE_KIND_TEXT, &delivered);
    printf("publish user=%.*s result=%s delivered=%zu\n", (int)user_len, line, wspush_result_str(result), delivered);
}

/* Reads stdin until EOF or a stop signal, publishing each complete line. */
static void publish_from_stdin(const wspush_server *server) {
    static char buffer[64 * 1024];
    size_t used = 0;
    while (!stop_requested) {
        struct pollfd input = {STDIN_FILENO, POLLIN, 0};
        ssize_t got;
        char *newline;
        /* A timeout, so a signal arriving between checks is still seen promptly. */
        int ready = poll(&input, 1, 200);
        if (ready < 0 && errno != EINTR) {
            perror("poll");
            return;
        }
        if (ready <= 0) {
            continue;
        }
        got = read(STDIN_FILENO, buffer + used, sizeof buffer - used);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got <= 0) {
            return; /* end of input */
        }
        used += (size_t)got;
        while ((newline = memchr(buffer, '\n', used)) != NULL) {
            size_t line_len = (size_t)(newline - buffer);
            if (line_len > 0 && buffer[line_len - 1] == '\r') {
                line_len--;
            }
            publish_line(server, buffer, line_len);
            used -= (size_t)(newline - buffer) + 1;
            memmove(buffer, newline + 1, used);
        }
        if (used == sizeof buffer) {
            fprintf(stderr, "line too long, discarded\n");
            used = 0;
        }
    }
}

static int check(wspush_result result, const char *what) {
    if (result != WSPUSH_RESULT_OK) {
        fprintf(stderr, "%s: %s\n", what, wspush_result_str(result));
        return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    const char *listen_address = argc > 1 ? argv[1] : "127.0.0.1:8080";
    static struct app app;
    wspush_callbacks callbacks;
    wspush_stats_snapshot stats;
    wspush_config *config;
    const wspush_server *server = NULL;
    struct sigaction action;
    uint16_t port = 0;
    int ok;

    /* Lines stay whole when stdout is a pipe. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("wspush %s\n", wspush_version());

    memset(&callbacks, 0, sizeof callbacks);
    callbacks.size = sizeof callbacks;
    callbacks.userdata = &app;
    callbacks.on_upgrade = on_upgrade;
    callbacks.on_open = on_open;
    callbacks.on_message = on_message;
    callbacks.on_close = on_close;
    callbacks.on_drop = on_drop;
    callbacks.on_http = on_http;

    config = wspush_config_new();
    if (config == NULL) {
        return 1;
    }
    ok = check(wspush_config_set_listen(config, listen_address, strlen(listen_address)), "listen address") &&
         check(wspush_config_set_path(config, "/ws", 3), "path") &&
         check(wspush_config_set_max_connections_per_user(config, 16), "max_connections_per_user") &&
         check(wspush_config_set_drain_timeout_ms(config, 1000), "drain timeout") &&
         check(wspush_config_set_callbacks(config, &callbacks), "callbacks") &&
         check(wspush_server_start(config, &server), "start");
    /* The server keeps its own copy of the configuration. */
    wspush_config_free(config);
    if (!ok) {
        return 1;
    }

    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);

    wspush_server_local_port(server, &port);
    printf("listening on port %u\n", (unsigned)port);

    publish_from_stdin(server);

    printf("stopping\n");
    check(wspush_server_stop(server), "stop");
    memset(&stats, 0, sizeof stats);
    stats.size = sizeof stats;
    if (check(wspush_stats(server, &stats), "stats")) {
        printf("stats upgrades=%" PRIu64 " rejected=%" PRIu64 " messages_in=%" PRIu64 " messages_out=%" PRIu64 "\n",
               stats.upgrades_total, stats.rejected_total, stats.messages_in_total, stats.messages_out_total);
    }
    /* After free returns no callback runs any more, so `app` could be released here. */
    if (!check(wspush_server_free(server), "free")) {
        return 1;
    }
    printf("stopped: %lu opened, %lu messages in\n", atomic_load(&app.opened), atomic_load(&app.messages_in));
    return 0;
}
