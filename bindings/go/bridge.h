/* C side of the Go binding: trampolines from the engine's callbacks into the exported Go
 * functions, and wrappers that return counts by value so Go passes no pointer to C. */
#ifndef WSPUSH_GO_BRIDGE_H
#define WSPUSH_GO_BRIDGE_H

#include <stddef.h>
#include <stdint.h>
#include "wspush.h"

/* Which callbacks wspush_go_set_callbacks installs. */
enum {
    WSPUSH_GO_ON_UPGRADE = 1 << 0,
    WSPUSH_GO_ON_OPEN = 1 << 1,
    WSPUSH_GO_ON_MESSAGE = 1 << 2,
    WSPUSH_GO_ON_CLOSE = 1 << 3,
    WSPUSH_GO_ON_DROP = 1 << 4,
    WSPUSH_GO_ON_HTTP = 1 << 5,
};

/* Returned by the request helpers below instead of calling the library when `request` is not
 * the request of the callback running on this thread (the C API allows a request only there).
 * Not a wspush_result value. */
#define WSPUSH_GO_NOT_IN_HANDLER 0xFFFFFFFFu

/* A result with the count a call reports through its optional out-parameter. */
typedef struct wspush_go_counted {
    wspush_result result;
    size_t count;
} wspush_go_counted;

/* A borrowed byte string handed out by a request accessor. */
typedef struct wspush_go_bytes {
    wspush_result result;
    const uint8_t *ptr;
    size_t len;
} wspush_go_bytes;

/* A header of a request, by index. */
typedef struct wspush_go_header {
    wspush_result result;
    const char *name;
    size_t name_len;
    const uint8_t *value;
    size_t value_len;
} wspush_go_header;

/* A ticket (upgrade) or port, with its result. */
typedef struct wspush_go_u64 {
    wspush_result result;
    uint64_t value;
} wspush_go_u64;

/* Installs the trampolines selected by `mask` with the cgo.Handle `handle` as userdata. */
wspush_result wspush_go_set_callbacks(wspush_config *config, uintptr_t handle, unsigned mask);

/* The server whose callback is running on this thread, NULL outside callbacks. */
const wspush_server *wspush_go_callback_server(void);

wspush_go_counted wspush_go_publish(const wspush_server *server, const uint8_t *user, size_t user_len,
                                    const uint8_t *payload, size_t payload_len, wspush_message_kind kind);
/* wspush_publish_with_offset's result with both of its out-parameters. */
typedef struct wspush_go_published {
    wspush_result result;
    size_t delivered;
    uint64_t offset;
} wspush_go_published;

wspush_go_published wspush_go_publish_with_offset(const wspush_server *server, const uint8_t *user,
                                                  size_t user_len, const uint8_t *payload, size_t payload_len,
                                                  wspush_message_kind kind);
/* wspush_publish_wait with both of its out-parameters. */
wspush_go_published wspush_go_publish_wait(const wspush_server *server, const uint8_t *user, size_t user_len,
                                           const uint8_t *payload, size_t payload_len, wspush_message_kind kind,
                                           uint64_t timeout_ms);
/* wspush_publish_async whose completion calls the exported wspushGoPublishDone with `handle` (the
 * cgo.Handle of the Go completion), marking the thread as inside a callback of `server` meanwhile
 * (see wspush_go_callback_server). When this returns an error the completion will never run and
 * the handle is still the caller's to delete. */
wspush_result wspush_go_publish_async(const wspush_server *server, const uint8_t *user, size_t user_len,
                                      const uint8_t *payload, size_t payload_len, wspush_message_kind kind,
                                      uintptr_t handle);
wspush_go_counted wspush_go_broadcast(const wspush_server *server, const uint8_t *payload, size_t payload_len,
                                      wspush_message_kind kind);
wspush_go_counted wspush_go_disconnect_user(const wspush_server *server, const uint8_t *user, size_t user_len,
                                            uint16_t code);
wspush_go_u64 wspush_go_local_port(const wspush_server *server);

/* A started server, or NULL with the reason. */
typedef struct wspush_go_started {
    wspush_result result;
    const wspush_server *server;
} wspush_go_started;

wspush_go_started wspush_go_start(const wspush_config *config);

/* Request accessors (WSPUSH_GO_NOT_IN_HANDLER off the callback's thread). `which`: 0 method, 1 path, 2 raw query, 3 peer. */
wspush_go_bytes wspush_go_request_field(const wspush_request *request, int which);
wspush_go_bytes wspush_go_request_query_param(const wspush_request *request, const char *name, size_t name_len);
wspush_go_bytes wspush_go_request_header(const wspush_request *request, const char *name, size_t name_len);
wspush_go_counted wspush_go_request_header_count(const wspush_request *request);
wspush_go_header wspush_go_request_header_at(const wspush_request *request, size_t index);
wspush_go_bytes wspush_go_request_verified_user(const wspush_request *request);
wspush_go_u64 wspush_go_request_ticket(const wspush_request *request);
wspush_go_u64 wspush_go_request_defer(wspush_request *request);
wspush_result wspush_go_request_accept(wspush_request *request, const uint8_t *user, size_t user_len);
wspush_result wspush_go_request_reject(wspush_request *request, uint16_t status);
wspush_result wspush_go_request_respond(wspush_request *request, uint16_t status, const char *content_type,
                                        size_t content_type_len, const uint8_t *body, size_t body_len);

#endif
