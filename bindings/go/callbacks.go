package wspush

// The Go ends of the C trampolines in bridge.c. Each finds the server's state through the
// cgo.Handle passed as userdata, copies what C lends for the call, and calls the Handler.
// A panic must not unwind into the engine's (Rust) frames, so each recovers and logs it.

/*
#include "bridge.h"
*/
import "C"

import (
	"math"
	"runtime/cgo"
	"runtime/debug"
	"sync/atomic"
	"unsafe"
)

// stateOf returns the server state behind a callback's userdata and, for callbacks that run
// while Start has not returned yet, makes the C server known to the Go Server.
func stateOf(handle C.uintptr_t, server *C.wspush_server) *serverState {
	state := cgo.Handle(handle).Value().(*serverState)
	if state.server.loadPtr() == nil {
		// Callbacks only run between wspush_server_start and the release, so nil here means
		// "Start has not stored it yet", never "released".
		atomic.CompareAndSwapPointer(&state.server.ptr, nil, unsafe.Pointer(server))
	}
	return state
}

// copyBytes copies a buffer C lends for the duration of a callback.
func copyBytes(ptr *C.uint8_t, length C.size_t) []byte {
	if length <= math.MaxInt32 {
		return C.GoBytes(unsafe.Pointer(ptr), C.int(length))
	}
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(ptr)), int(length))...)
}

// recoverHandler logs a panic of a handler method; run deferred.
func (state *serverState) recoverHandler(event string) {
	if recovered := recover(); recovered != nil {
		state.errorLog.Printf("wspush: panic in %s handler (recovered): %v\n%s", event, recovered, debug.Stack())
	}
}

//export wspushGoOnUpgrade
func wspushGoOnUpgrade(handle C.uintptr_t, server *C.wspush_server, request *C.wspush_request) {
	state := stateOf(handle, server)
	r := &Request{ptr: request}
	// After the callback the request is gone: later calls on this thread must not reach it.
	defer r.ended.Store(true)
	defer func() {
		if recovered := recover(); recovered != nil {
			state.errorLog.Printf("wspush: panic in upgrade handler (recovered; rejecting with 500): %v\n%s",
				recovered, debug.Stack())
			// The last decision wins, so this overrides whatever the handler decided before.
			C.wspush_request_reject(request, 500)
		}
	}()
	state.handler.OnUpgrade(state.server, r)
}

//export wspushGoOnHTTP
func wspushGoOnHTTP(handle C.uintptr_t, server *C.wspush_server, request *C.wspush_request) {
	state := stateOf(handle, server)
	r := &Request{ptr: request}
	defer r.ended.Store(true)
	defer func() {
		if recovered := recover(); recovered != nil {
			state.errorLog.Printf("wspush: panic in HTTP handler (recovered; answering 500): %v\n%s",
				recovered, debug.Stack())
			const contentType, body = "text/plain", "internal server error\n"
			C.wspush_request_respond(request, 500, strPtr(contentType), C.size_t(len(contentType)),
				bytesPtr([]byte(body)), C.size_t(len(body)))
		}
	}()
	state.http.OnHTTP(state.server, r)
}

//export wspushGoOnOpen
func wspushGoOnOpen(handle C.uintptr_t, server *C.wspush_server, conn C.uint64_t, user *C.uint8_t, userLen C.size_t) {
	state := stateOf(handle, server)
	defer state.recoverHandler("open")
	state.handler.OnOpen(state.server, ConnID(conn), copyBytes(user, userLen))
}

//export wspushGoOnMessage
func wspushGoOnMessage(handle C.uintptr_t, server *C.wspush_server, conn C.uint64_t, user *C.uint8_t, userLen C.size_t,
	kind C.wspush_message_kind, payload *C.uint8_t, payloadLen C.size_t) {
	state := stateOf(handle, server)
	defer state.recoverHandler("message")
	state.handler.OnMessage(state.server, ConnID(conn), copyBytes(user, userLen), copyBytes(payload, payloadLen),
		kind == C.WSPUSH_MESSAGE_KIND_BINARY)
}

//export wspushGoOnClose
func wspushGoOnClose(handle C.uintptr_t, server *C.wspush_server, conn C.uint64_t, user *C.uint8_t, userLen C.size_t,
	code C.uint16_t) {
	state := stateOf(handle, server)
	defer state.recoverHandler("close")
	state.handler.OnClose(state.server, ConnID(conn), copyBytes(user, userLen), int(code))
}

//export wspushGoOnDrop
func wspushGoOnDrop(handle C.uintptr_t, server *C.wspush_server, conn C.uint64_t, user *C.uint8_t, userLen C.size_t,
	droppedBytes C.size_t) {
	state := stateOf(handle, server)
	defer state.recoverHandler("drop")
	state.handler.OnDrop(state.server, ConnID(conn), copyBytes(user, userLen), int(droppedBytes))
}
