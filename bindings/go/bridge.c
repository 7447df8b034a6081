// C side of the Go binding; see bridge.h.
#include <stdlib.h>
#include <string.h>

#include "bridge.h"
#include "_cgo_export.h"

// The server whose callback runs on this thread: lets Server.Stop tell that it was called from
// inside one of its own callbacks, where it must not wait for the I/O threads.
static __thread const wspush_server *running_callback_server;
// The request of the on_upgrade/on_http callback running on this thread: the request helpers
// refuse any other, so a Go Request kept by another goroutine never reaches the library.
static __thread const wspush_request *running_request;

const wspush_server *wspush_go_callback_server(void) {
    return running_callback_server;
}

// Each trampoline marks the thread as inside a callback of `server` (restoring the outer value,
// should callbacks of two servers ever nest) and calls the exported Go function. userdata is the
// cgo.Handle of the Go server state, an integer, never a Go pointer.

static void on_upgrade(void *userdata, const wspush_server *server, wspush_request *request) {
    const wspush_server *outer = running_callback_server;
    const wspush_request *outer_request = running_request;
    running_callback_server = server;
    running_request = request;
    wspushGoOnUpgrade((uintptr_t)userdata, (wspush_server *)server, request);
    running_callback_server = outer;
    running_request = outer_request;
}

static void on_http(void *userdata, const wspush_server *server, wspush_request *request) {
    const wspush_server *outer = running_callback_server;
    const wspush_request *outer_request = running_request;
    running_callback_server = server;
    running_request = request;
    wspushGoOnHTTP((uintptr_t)userdata, (wspush_server *)server, request);
    running_callback_server = outer;
    running_request = outer_request;
}

static void on_open(void *userdata, const wspush_server *server, uint64_t conn, const uint8_t *user,
                    size_t user_len) {
    const wspush_server *outer = running_callback_server;
    running_callback_server = server;
    wspushGoOnOpen((uintptr_t)userdata, (wspush_server *)server, conn, (uint8_t *)user, user_len);
    running_callback_server = outer;
}

static void on_message(void *userdata, const wspush_server *server, uint64_t conn, const uint8_t *user,
                       size_t user_len, wspush_message_kind kind, const uint8_t *payload, size_t payload_len) {
    const wspush_server *outer = running_callback_server;
    running_callback_server = server;
    wspushGoOnMessage((uintptr_t)userdata, (wspush_server *)server, conn, (uint8_t *)user, user_len, kind,
                      (uint8_t *)payload, payload_len);
    running_callback_server = outer;
}

static void on_close(void *userdata, const wspush_server *server, uint64_t conn, const uint8_t *user,
                     size_t user_len, uint16_t code) {
    const wspush_server *outer = running_callback_server;
    running_callback_server = server;
    wspushGoOnClose((uintptr_t)userdata, (wspush_server *)server, conn, (uint8_t *)user, user_len, code);
    running_callback_server = outer;
}

static void on_drop(void *userdata, const wspush_server *server, uint64_t conn, const uint8_t *user,
                    size_t user_len, size_t dropped_bytes) {
    const wspush_server *outer = running_callback_server;
    running_callback_server = server;
    wspushGoOnDrop((uintptr_t)userdata, (wspush_server *)server, conn, (uint8_t *)user, user_len, dropped_bytes);
    running_callback_server = outer;
}

wspush_result wspush_go_set_callbacks(wspush_config *config, uintptr_t handle, unsigned mask) {
    wspush_callbacks callbacks;
    memset(&callbacks, 0, sizeof callbacks);
    callbacks.size = sizeof callbacks;
    // The cgo docs' way to hand a cgo.Handle to C: convert the integer to void* in C.
    callbacks.userdata = (void *)handle;
    if (mask & WSPUSH_GO_ON_UPGRADE) callbacks.on_upgrade = on_upgrade;
    if (mask & WSPUSH_GO_ON_OPEN) callbacks.on_open = on_open;
    if (mask & WSPUSH_GO_ON_MESSAGE) callbacks.on_message = on_message;
    if (mask & WSPUSH_GO_ON_CLOSE) callbacks.on_close = on_close;
    if (mask & WSPUSH_GO_ON_DROP) callbacks.on_drop = on_drop;
    if (mask & WSPUSH_GO_ON_HTTP) callbacks.on_http = on_http;
    return wspush_config_set_callbacks(config, &callbacks);
}

wspush_go_started wspush_go_start(const wspush_config *config) {
    wspush_go_started out = {0, NULL};
    out.result = wspush_server_start(config, &out.server);
    return out;
}

wspush_go_counted wspush_go_publish(const wspush_server *server, const uint8_t *user, size_t user_len,
                                    const uint8_t *payload, size_t payload_len, wspush_message_kind kind) {
    wspush_go_counted out = {0, 0};
    out.result = wspush_publish(server, user, user_len, payload, payload_len, kind, &out.count);
    return out;
}

wspush_go_published wspush_go_publish_with_offset(const wspush_server *server, const uint8_t *user,
                                                  size_t user_len, const uint8_t *payload, size_t payload_len,
                                                  wspush_message_kind kind) {
    wspush_go_published out = {0, 0, 0};
    out.result =
        wspush_publish_with_offset(server, user, user_len, payload, payload_len, kind, &out.delivered, &out.offset);
    return out;
}

wspush_go_published wspush_go_publish_wait(const wspush_server *server, const uint8_t *user, size_t user_len,
                                           const uint8_t *payload, size_t payload_len, wspush_message_kind kind,
                                           uint64_t timeout_ms) {
    wspush_go_published out = {0, 0, 0};
    out.result = wspush_publish_wait(server, user, user_len, payload, payload_len, kind, timeout_ms, &out.delivered,
                                     &out.offset);
    return out;
}

// What a publish completion needs: the Go completion's cgo.Handle, and the server, to mark the
// thread as inside one of its callbacks while Go runs (Stop there must only start the stop).
typedef struct publish_done_context {
    uintptr_t handle;
    const wspush_server *server;
} publish_done_context;

static void publish_done(void *userdata, wspush_result result, size_t delivered, uint64_t offset) {
    publish_done_context *context = userdata;
    const wspush_server *outer = running_callback_server;
    running_callback_server = context->server;
    wspushGoPublishDone(context->handle, result, delivered, offset);
    running_callback_server = outer;
    free(context);
}

wspush_result wspush_go_publish_async(const wspush_server *server, const uint8_t *user, size_t user_len,
                                      const uint8_t *payload, size_t payload_len, wspush_message_kind kind,
                                      uintptr_t handle) {
    publish_done_context *context = malloc(sizeof *context);
    if (context == NULL) return WSPUSH_RESULT_IO;
    context->handle = handle;
    context->server = server;
    wspush_result result = wspush_publish_async(server, user, user_len, payload, payload_len, kind, publish_done, context);
    // Refused: publish_done will not run (and, without Redis, has not).
    if (result != WSPUSH_RESULT_OK) free(context);
    return result;
}

wspush_go_counted wspush_go_broadcast(const wspush_server *server, const uint8_t *payload, size_t payload_len,
                                      wspush_message_kind kind) {
    wspush_go_counted out = {0, 0};
    out.result = wspush_broadcast(server, payload, payload_len, kind, &out.count);
    return out;
}

wspush_go_counted wspush_go_disconnect_user(const wspush_server *server, const uint8_t *user, size_t user_len,
                                            uint16_t code) {
    wspush_go_counted out = {0, 0};
    out.result = wspush_disconnect_user(server, user, user_len, code, &out.count);
    return out;
}

wspush_go_u64 wspush_go_local_port(const wspush_server *server) {
    uint16_t port = 0;
    wspush_go_u64 out;
    out.result = wspush_server_local_port(server, &port);
    out.value = port;
    return out;
}

wspush_go_bytes wspush_go_request_field(const wspush_request *request, int which) {
    wspush_go_bytes out = {WSPUSH_GO_NOT_IN_HANDLER, NULL, 0};
    if (request != running_request) return out;
    const char *text = NULL;
    switch (which) {
    case 0: out.result = wspush_request_method(request, &text, &out.len); break;
    case 1: out.result = wspush_request_path(request, &text, &out.len); break;
    case 2: out.result = wspush_request_query(request, &text, &out.len); break;
    default: out.result = wspush_request_peer(request, &text, &out.len); break;
    }
    out.ptr = (const uint8_t *)text;
    return out;
}

wspush_go_bytes wspush_go_request_query_param(const wspush_request *request, const char *name, size_t name_len) {
    wspush_go_bytes out = {WSPUSH_GO_NOT_IN_HANDLER, NULL, 0};
    if (request != running_request) return out;
    const char *text = NULL;
    out.result = wspush_request_query_param(request, name, name_len, &text, &out.len);
    out.ptr = (const uint8_t *)text;
    return out;
}

wspush_go_bytes wspush_go_request_header(const wspush_request *request, const char *name, size_t name_len) {
    wspush_go_bytes out = {WSPUSH_GO_NOT_IN_HANDLER, NULL, 0};
    if (request != running_request) return out;
    out.result = wspush_request_header(request, name, name_len, &out.ptr, &out.len);
    return out;
}

wspush_go_counted wspush_go_request_header_count(const wspush_request *request) {
    wspush_go_counted out = {WSPUSH_GO_NOT_IN_HANDLER, 0};
    if (request != running_request) return out;
    out.result = wspush_request_header_count(request, &out.count);
    return out;
}

wspush_go_header wspush_go_request_header_at(const wspush_request *request, size_t index) {
    wspush_go_header out;
    memset(&out, 0, sizeof out);
    out.result = WSPUSH_GO_NOT_IN_HANDLER;
    if (request != running_request) return out;
    out.result = wspush_request_header_at(request, index, &out.name, &out.name_len, &out.value, &out.value_len);
    return out;
}

wspush_go_bytes wspush_go_request_verified_user(const wspush_request *request) {
    wspush_go_bytes out = {WSPUSH_GO_NOT_IN_HANDLER, NULL, 0};
    if (request != running_request) return out;
    out.result = wspush_request_verified_user(request, &out.ptr, &out.len);
    return out;
}

wspush_go_u64 wspush_go_request_ticket(const wspush_request *request) {
    wspush_go_u64 out = {WSPUSH_GO_NOT_IN_HANDLER, 0};
    if (request != running_request) return out;
    out.result = wspush_request_ticket(request, &out.value);
    return out;
}

wspush_go_u64 wspush_go_request_defer(wspush_request *request) {
    wspush_go_u64 out = {WSPUSH_GO_NOT_IN_HANDLER, 0};
    if (request != running_request) return out;
    out.result = wspush_request_defer(request, &out.value);
    return out;
}

wspush_result wspush_go_request_accept(wspush_request *request, const uint8_t *user, size_t user_len) {
    if (request != running_request) return WSPUSH_GO_NOT_IN_HANDLER;
    return wspush_request_accept(request, user, user_len);
}

wspush_result wspush_go_request_reject(wspush_request *request, uint16_t status) {
    if (request != running_request) return WSPUSH_GO_NOT_IN_HANDLER;
    return wspush_request_reject(request, status);
}

wspush_result wspush_go_request_respond(wspush_request *request, uint16_t status, const char *content_type,
                                        size_t content_type_len, const uint8_t *body, size_t body_len) {
    if (request != running_request) return WSPUSH_GO_NOT_IN_HANDLER;
    return wspush_request_respond(request, status, content_type, content_type_len, body, body_len);
}
