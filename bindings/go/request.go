package wspush

/*
#include "bridge.h"
*/
import "C"

import (
	"math"
	"sync/atomic"
	"unsafe"
)

// Request is an HTTP request seen by Handler.OnUpgrade or HTTPHandler.OnHTTP. Like the C
// request it wraps, it may be used only inside that method, on its goroutine: elsewhere, or
// after the method returned, its methods return zero values or ErrRequestOutsideHandler and
// touch nothing. To decide an upgrade elsewhere, call Defer and pass the ticket. Strings it
// returns are copies.
type Request struct {
	// ptr never changes. The C bridge refuses it on any thread but the callback's (so a
	// goroutine that kept the Request cannot reach the library); ended refuses it on that
	// thread once the callback has returned (a later callback may get the same address).
	ptr   *C.wspush_request
	ended atomic.Bool
}

// live returns the C request, or nil after the callback returned.
func (r *Request) live() *C.wspush_request {
	if r.ended.Load() {
		return nil
	}
	return r.ptr
}

// requestError turns a request helper's result into nil or an error for op.
func requestError(op string, result C.wspush_result) error {
	if result == C.WSPUSH_GO_NOT_IN_HANDLER {
		return ErrRequestOutsideHandler
	}
	return check(op, result)
}

// borrowedString copies a byte string the library lends for the callback into a Go string.
func borrowedString(field C.wspush_go_bytes) (string, bool) {
	if field.result != C.WSPUSH_RESULT_OK {
		return "", false
	}
	return C.GoStringN((*C.char)(unsafe.Pointer(field.ptr)), C.int(field.len)), true
}

func (r *Request) field(which C.int) string {
	ptr := r.live()
	if ptr == nil {
		return ""
	}
	value, _ := borrowedString(C.wspush_go_request_field(ptr, which))
	return value
}

// Method returns the request method, e.g. "GET".
func (r *Request) Method() string { return r.field(0) }

// Path returns the path of the request target without the query string, e.g. "/ws".
func (r *Request) Path() string { return r.field(1) }

// RawQuery returns the query string after '?', not percent-decoded ("" when none).
func (r *Request) RawQuery() string { return r.field(2) }

// Peer returns the client's address, "ip:port" ("[v6]:port" for IPv6): the socket's peer or,
// from a trusted load balancer with Config.ProxyProtocol, the address its PROXY header gave;
// "" when the socket no longer has one.
func (r *Request) Peer() string { return r.field(3) }

// Query returns the value of the first query parameter called name, as sent (not
// percent-decoded); "" when absent or without a value. LookupQuery tells the two apart.
func (r *Request) Query(name string) string {
	value, _ := r.LookupQuery(name)
	return value
}

// LookupQuery returns the value of the first query parameter called name and whether it is
// present.
func (r *Request) LookupQuery(name string) (string, bool) {
	ptr := r.live()
	if ptr == nil {
		return "", false
	}
	return borrowedString(C.wspush_go_request_query_param(ptr, strPtr(name), C.size_t(len(name))))
}

// Header returns the value of the first header called name (case-insensitive); "" when absent.
func (r *Request) Header(name string) string {
	value, _ := r.LookupHeader(name)
	return value
}

// LookupHeader returns the value of the first header called name (case-insensitive) and
// whether it is present.
func (r *Request) LookupHeader(name string) (string, bool) {
	ptr := r.live()
	if ptr == nil {
		return "", false
	}
	return borrowedString(C.wspush_go_request_header(ptr, strPtr(name), C.size_t(len(name))))
}

// HeaderField is one header of a request, as received.
type HeaderField struct {
	// Name is the header name as sent (not canonicalized).
	Name string
	// Value is the raw header value.
	Value string
}

// Headers returns every header of the request, in the order received.
func (r *Request) Headers() []HeaderField {
	ptr := r.live()
	if ptr == nil {
		return nil
	}
	count := C.wspush_go_request_header_count(ptr)
	if count.result != C.WSPUSH_RESULT_OK {
		return nil
	}
	headers := make([]HeaderField, 0, int(count.count))
	for i := C.size_t(0); i < count.count; i++ {
		header := C.wspush_go_request_header_at(ptr, i)
		if header.result != C.WSPUSH_RESULT_OK {
			break
		}
		headers = append(headers, HeaderField{
			Name:  C.GoStringN(header.name, C.int(header.name_len)),
			Value: C.GoStringN((*C.char)(unsafe.Pointer(header.value)), C.int(header.value_len)),
		})
	}
	return headers
}

// VerifiedUser returns the user ID (sub claim) of the valid JSON Web Token this request
// carries (see Config.JWTHS256Secret), taken from an "Authorization: Bearer" header, else the
// "token" query parameter, and true; nil and false without a secret, without a token, when the
// token is invalid (bad signature, not HS256, expired, not yet valid, no usable sub), or
// outside the handler. The slice is a copy.
func (r *Request) VerifiedUser() ([]byte, bool) {
	ptr := r.live()
	if ptr == nil {
		return nil, false
	}
	user := C.wspush_go_request_verified_user(ptr)
	if user.result != C.WSPUSH_RESULT_OK {
		return nil, false
	}
	return copyBytes(user.ptr, user.len), true
}

// Ticket returns the ticket of this pending upgrade; it becomes the connection's ID once
// accepted. 0 for a plain HTTP request or outside the handler.
func (r *Request) Ticket() ConnID {
	ptr := r.live()
	if ptr == nil {
		return 0
	}
	ticket := C.wspush_go_request_ticket(ptr)
	if ticket.result != C.WSPUSH_RESULT_OK {
		return 0
	}
	return ConnID(ticket.value)
}

// Accept accepts the upgrade as user (1 to MaxUserIDLen bytes without NUL, copied);
// ErrInvalidUserID leaves the decision unchanged. The last Accept/Reject/Defer of the handler wins.
func (r *Request) Accept(user []byte) error {
	ptr := r.live()
	if ptr == nil {
		return ErrRequestOutsideHandler
	}
	return requestError("Request.Accept", C.wspush_go_request_accept(ptr, bytesPtr(user), C.size_t(len(user))))
}

// Reject refuses the upgrade with HTTP status (400-599) and closes the connection.
func (r *Request) Reject(status int) error {
	ptr := r.live()
	if ptr == nil {
		return ErrRequestOutsideHandler
	}
	if status < 0 || status > math.MaxUint16 {
		return &Error{Code: ResultInvalidStatus, Op: "Request.Reject"}
	}
	return requestError("Request.Reject", C.wspush_go_request_reject(ptr, C.uint16_t(status)))
}

// Defer postpones the decision: call Server.AcceptUpgrade or Server.RejectUpgrade with the
// returned ticket later, from any goroutine. Config.HandshakeTimeout still applies.
func (r *Request) Defer() (ConnID, error) {
	ptr := r.live()
	if ptr == nil {
		return 0, ErrRequestOutsideHandler
	}
	ticket := C.wspush_go_request_defer(ptr)
	if err := requestError("Request.Defer", ticket.result); err != nil {
		return 0, err
	}
	return ConnID(ticket.value), nil
}

// Respond answers a plain HTTP request (in HTTPHandler.OnHTTP) with status (200-599), a
// Content-Type and a body; all copied.
func (r *Request) Respond(status int, contentType string, body []byte) error {
	ptr := r.live()
	if ptr == nil {
		return ErrRequestOutsideHandler
	}
	if status < 0 || status > math.MaxUint16 {
		return &Error{Code: ResultInvalidStatus, Op: "Request.Respond"}
	}
	return requestError("Request.Respond", C.wspush_go_request_respond(ptr, C.uint16_t(status),
		strPtr(contentType), C.size_t(len(contentType)), bytesPtr(body), C.size_t(len(body))))
}
