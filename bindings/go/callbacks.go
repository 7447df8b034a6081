package wspush

// The Go ends of the C trampolines in bridge.c. Each finds the server's state through the
// cgo.Handle passed as userdata, copies what C lends for the call, and calls the Handler.
// A panic must not unwind into the engine's (Rust) frames, so each recovers and logs it.

/*
#include "bridge.h"
*/
import "C"

import (
	"fmt"
	"log"
	"math"
	"os"
	"runtime/cgo"
	"runtime/debug"
	"sync"
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

// recoverHandler logs a panic of a handler method, or reports a runtime.Goexit (returned
// false without a panic); run deferred.
func (state *serverState) recoverHandler(event string, returned *bool) {
	if recovered := recover(); recovered != nil {
		state.errorLog.Printf("wspush: panic in %s handler (recovered): %v\n%s", event, recovered, debug.Stack())
	} else if !*returned {
		state.reportGoexit(event)
	}
}

// reportGoexit explains, before the runtime kills the process, that a handler called
// runtime.Goexit. Go cannot end a goroutine on a thread it did not create (the engine's I/O
// thread): Goexit cannot be recovered, and the runtime aborts with "Goexit called in a thread
// that was not created by the Go runtime" once the deferred calls have run. t.Fatal, t.FailNow,
// t.Skip and friends call Goexit, so a test must not use them in a handler.
func (state *serverState) reportGoexit(event string) {
	message := fmt.Sprintf("wspush: FATAL: the %s handler called runtime.Goexit (t.Fatal, t.FailNow, t.Skip... "+
		"in a handler?). Handlers run on the engine's threads, which Go cannot exit: the process dies now. "+
		"In tests, use t.Error and return, or hand the failure to the test goroutine.\n%s", event, debug.Stack())
	state.errorLog.Print(message)
	if state.errorLog.Writer() != os.Stderr {
		fmt.Fprint(os.Stderr, message) // the log may be buffered or discarded: this is the last word
	}
}

//export wspushGoOnUpgrade
func wspushGoOnUpgrade(handle C.uintptr_t, server *C.wspush_server, request *C.wspush_request) {
	state := stateOf(handle, server)
	r := &Request{ptr: request}
	// After the callback the request is gone: later calls on this thread must not reach it.
	defer r.ended.Store(true)
	returned := false
	defer func() {
		if recovered := recover(); recovered != nil {
			state.errorLog.Printf("wspush: panic in upgrade handler (recovered; rejecting with 500): %v\n%s",
				recovered, debug.Stack())
			// The last decision wins, so this overrides whatever the handler decided before.
			C.wspush_request_reject(request, 500)
		} else if !returned {
			state.reportGoexit("upgrade")
		}
	}()
	state.handler.OnUpgrade(state.server, r)
	returned = true
}

//export wspushGoOnHTTP
func wspushGoOnHTTP(handle C.uintptr_t, server *C.wspush_server, request *C.wspush_request) {
	state := stateOf(handle, server)
	r := &Request{ptr: request}
	defer r.ended.Store(true)
	returned := false
	defer func() {
		if recovered := recover(); recovered != nil {
			state.errorLog.Printf("wspush: panic in HTTP handler (recovered; answering 500): %v\n%s",
				recovered, debug.Stack())
			const contentType, body = "text/plain", "internal server error\n"
			C.wspush_request_respond(request, 500, strPtr(contentType), C.size_t(len(contentType)),
				bytesPtr([]byte(body)), C.size_t(len(body)))
		} else if !returned {
			state.reportGoexit("HTTP")
		}
	}()
	state.http.OnHTTP(state.server, r)
	returned = true
}

//export wspushGoOnOpen
func wspushGoOnOpen(handle C.uintptr_t, server *C.wspush_server, conn C.uint64_t, user *C.uint8_t, userLen C.size_t) {
	state := stateOf(handle, server)
	returned := false
	defer state.recoverHandler("open", &returned)
	state.handler.OnOpen(state.server, ConnID(conn), copyBytes(user, userLen))
	returned = true
}

//export wspushGoOnMessage
func wspushGoOnMessage(handle C.uintptr_t, server *C.wspush_server, conn C.uint64_t, user *C.uint8_t, userLen C.size_t,
	kind C.wspush_message_kind, payload *C.uint8_t, payloadLen C.size_t) {
	state := stateOf(handle, server)
	returned := false
	defer state.recoverHandler("message", &returned)
	state.handler.OnMessage(state.server, ConnID(conn), copyBytes(user, userLen), copyBytes(payload, payloadLen),
		kind == C.WSPUSH_MESSAGE_KIND_BINARY)
	returned = true
}

//export wspushGoOnClose
func wspushGoOnClose(handle C.uintptr_t, server *C.wspush_server, conn C.uint64_t, user *C.uint8_t, userLen C.size_t,
	code C.uint16_t) {
	state := stateOf(handle, server)
	returned := false
	defer state.recoverHandler("close", &returned)
	state.handler.OnClose(state.server, ConnID(conn), copyBytes(user, userLen), int(code))
	returned = true
}

//export wspushGoOnDrop
func wspushGoOnDrop(handle C.uintptr_t, server *C.wspush_server, conn C.uint64_t, user *C.uint8_t, userLen C.size_t,
	droppedBytes C.size_t) {
	state := stateOf(handle, server)
	returned := false
	defer state.recoverHandler("drop", &returned)
	state.handler.OnDrop(state.server, ConnID(conn), copyBytes(user, userLen), int(droppedBytes))
	returned = true
}

// publishDone is a PublishAsync completion, reached from C through its cgo.Handle.
type publishDone struct {
	done     func(Published, error)
	errorLog *log.Logger
	// onCaller: without Redis the library completes the publish on the calling goroutine before
	// wspush_publish_async returns, while PublishAsync holds the server's read lock. The outcome
	// is then only recorded here and PublishAsync calls done after releasing the lock, so done
	// may call anything (Stop included) without waiting for that lock. (Should a completion
	// ever come after PublishAsync returned, it runs done itself: mu and returned decide.)
	onCaller  bool
	mu        sync.Mutex
	returned  bool // PublishAsync has returned from the C call (onCaller only)
	completed bool // the outcome was recorded for PublishAsync to deliver (onCaller only)
	published Published
	err       error
}

// callerReturned is PublishAsync's side of onCaller: it runs done if the completion came
// during the C call.
func (p *publishDone) callerReturned() {
	p.mu.Lock()
	p.returned = true
	completed := p.completed
	p.mu.Unlock()
	if completed {
		p.run(false)
	}
}

// outcomeOf converts a completion's C values into what done receives.
func outcomeOf(result C.wspush_result, delivered C.size_t, offset C.uint64_t) (Published, error) {
	if err := check("PublishAsync", result); err != nil {
		return Published{}, err
	}
	return Published{Delivered: int(delivered), Offset: uint64(offset)}, nil
}

// run calls done, recovering (and logging) a panic: on the engine's Redis thread it must not
// unwind into the engine, and on the caller it must not leave PublishAsync half done.
func (p *publishDone) run(onEngineThread bool) {
	returned := false
	defer func() {
		if recovered := recover(); recovered != nil {
			p.errorLog.Printf("wspush: panic in PublishAsync completion (recovered): %v\n%s", recovered, debug.Stack())
		} else if !returned && onEngineThread {
			(&serverState{errorLog: p.errorLog}).reportGoexit("PublishAsync completion")
		}
	}()
	p.done(p.published, p.err)
	returned = true
}

//export wspushGoPublishDone
func wspushGoPublishDone(handle C.uintptr_t, result C.wspush_result, delivered C.size_t, offset C.uint64_t) {
	h := cgo.Handle(handle)
	p := h.Value().(*publishDone)
	// Called exactly once per accepted publish: the handle is not needed any more.
	h.Delete()
	if p.onCaller {
		p.mu.Lock()
		p.published, p.err = outcomeOf(result, delivered, offset)
		deferred := !p.returned
		p.completed = deferred
		p.mu.Unlock()
		if deferred {
			return // PublishAsync calls done once it has let go of the server
		}
	} else {
		p.published, p.err = outcomeOf(result, delivered, offset)
	}
	p.run(true)
}
