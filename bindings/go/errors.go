package wspush

/*
#include "bridge.h"
*/
import "C"

import "errors"

// Result is a result code of the C library (wspush_result). Values never change meaning.
type Result uint32

// The result codes, as in include/wspush.h.
const (
	// ResultOK is success.
	ResultOK Result = 0
	// ResultNullArgument: a required pointer argument was NULL.
	ResultNullArgument Result = 1
	// ResultInvalidArgument: a value is out of range, or the call is not allowed here.
	ResultInvalidArgument Result = 2
	// ResultInvalidUTF8: text that must be UTF-8 is not.
	ResultInvalidUTF8 Result = 3
	// ResultInvalidAddress: the listen address is not "host:port" or does not resolve, or a
	// trusted proxy is not an address or CIDR network.
	ResultInvalidAddress Result = 4
	// ResultBindFailed: the listening socket could not be bound (address in use, ...).
	ResultBindFailed Result = 5
	// ResultInvalidUserID: a user ID must be 1 to 255 bytes long and contain no NUL byte.
	ResultInvalidUserID Result = 6
	// ResultInvalidCloseCode: close codes must be 1000-1003, 1007-1014 or 3000-4999.
	ResultInvalidCloseCode Result = 7
	// ResultInvalidCloseReason: a close reason must be at most 123 bytes of UTF-8.
	ResultInvalidCloseReason Result = 8
	// ResultInvalidStatus: an HTTP status is out of range (400-599 to reject, 200-599 to respond).
	ResultInvalidStatus Result = 9
	// ResultMessageTooLarge: the payload is larger than MaxQueueBytes.
	ResultMessageTooLarge Result = 10
	// ResultNotFound: no such open connection, pending upgrade, query parameter, header or peer.
	ResultNotFound Result = 11
	// ResultStopped: the server is stopping or stopped.
	ResultStopped Result = 12
	// ResultIO: the engine could not create its threads or pollers.
	ResultIO Result = 13
	// ResultInCallback: the call is not allowed from inside a callback of this server, or would
	// wait for the thread it runs on (PublishWait inside a PublishAsync completion).
	ResultInCallback Result = 14
	// ResultPanic: a bug in wspush was caught at the C boundary.
	ResultPanic Result = 15
	// ResultUnavailable: Redis (Config.RedisURL) did not confirm a publish within
	// Config.RedisTimeout, or is known to be unreachable. The message may still be applied
	// (then delivered and numbered like any other).
	ResultUnavailable Result = 16
)

// The numbers above are the header's; these fail to compile if a value ever differed.
var (
	_ = [1]struct{}{}[ResultOK-C.WSPUSH_RESULT_OK]
	_ = [1]struct{}{}[ResultNullArgument-C.WSPUSH_RESULT_NULL_ARGUMENT]
	_ = [1]struct{}{}[ResultInvalidArgument-C.WSPUSH_RESULT_INVALID_ARGUMENT]
	_ = [1]struct{}{}[ResultInvalidUTF8-C.WSPUSH_RESULT_INVALID_UTF8]
	_ = [1]struct{}{}[ResultInvalidAddress-C.WSPUSH_RESULT_INVALID_ADDRESS]
	_ = [1]struct{}{}[ResultBindFailed-C.WSPUSH_RESULT_BIND_FAILED]
	_ = [1]struct{}{}[ResultInvalidUserID-C.WSPUSH_RESULT_INVALID_USER_ID]
	_ = [1]struct{}{}[ResultInvalidCloseCode-C.WSPUSH_RESULT_INVALID_CLOSE_CODE]
	_ = [1]struct{}{}[ResultInvalidCloseReason-C.WSPUSH_RESULT_INVALID_CLOSE_REASON]
	_ = [1]struct{}{}[ResultInvalidStatus-C.WSPUSH_RESULT_INVALID_STATUS]
	_ = [1]struct{}{}[ResultMessageTooLarge-C.WSPUSH_RESULT_MESSAGE_TOO_LARGE]
	_ = [1]struct{}{}[ResultNotFound-C.WSPUSH_RESULT_NOT_FOUND]
	_ = [1]struct{}{}[ResultStopped-C.WSPUSH_RESULT_STOPPED]
	_ = [1]struct{}{}[ResultIO-C.WSPUSH_RESULT_IO]
	_ = [1]struct{}{}[ResultInCallback-C.WSPUSH_RESULT_IN_CALLBACK]
	_ = [1]struct{}{}[ResultPanic-C.WSPUSH_RESULT_PANIC]
	_ = [1]struct{}{}[ResultUnavailable-C.WSPUSH_RESULT_UNAVAILABLE]
)

// String describes the code in English, as wspush_result_str does.
func (r Result) String() string {
	return C.GoString(C.wspush_result_str(C.uint32_t(r)))
}

// Error is a failed call: the operation and the library's result code. Compare with the
// sentinel values (ErrNotFound, ErrStopped, ...) using errors.Is, or read Code with errors.As.
type Error struct {
	// Code is the library's result code; never ResultOK.
	Code Result
	// Op names the failed operation, e.g. "Publish"; empty in the sentinel values.
	Op string
}

// Error formats the error as "wspush: Op: description".
func (e *Error) Error() string {
	if e.Op == "" {
		return "wspush: " + e.Code.String()
	}
	return "wspush: " + e.Op + ": " + e.Code.String()
}

// Is reports whether target is an *Error with the same Code, so that
// errors.Is(err, wspush.ErrNotFound) holds whatever the operation.
func (e *Error) Is(target error) bool {
	var other *Error
	return errors.As(target, &other) && other.Code == e.Code
}

// Sentinel errors, one per result code, for errors.Is.
var (
	// ErrNullArgument matches errors with ResultNullArgument.
	ErrNullArgument = &Error{Code: ResultNullArgument}
	// ErrInvalidArgument matches errors with ResultInvalidArgument (e.g. a bad Config value).
	ErrInvalidArgument = &Error{Code: ResultInvalidArgument}
	// ErrInvalidUTF8 matches errors with ResultInvalidUTF8.
	ErrInvalidUTF8 = &Error{Code: ResultInvalidUTF8}
	// ErrInvalidAddress matches errors with ResultInvalidAddress.
	ErrInvalidAddress = &Error{Code: ResultInvalidAddress}
	// ErrBindFailed matches errors with ResultBindFailed (e.g. the port is in use).
	ErrBindFailed = &Error{Code: ResultBindFailed}
	// ErrInvalidUserID matches errors with ResultInvalidUserID.
	ErrInvalidUserID = &Error{Code: ResultInvalidUserID}
	// ErrInvalidCloseCode matches errors with ResultInvalidCloseCode.
	ErrInvalidCloseCode = &Error{Code: ResultInvalidCloseCode}
	// ErrInvalidCloseReason matches errors with ResultInvalidCloseReason.
	ErrInvalidCloseReason = &Error{Code: ResultInvalidCloseReason}
	// ErrInvalidStatus matches errors with ResultInvalidStatus.
	ErrInvalidStatus = &Error{Code: ResultInvalidStatus}
	// ErrMessageTooLarge matches errors with ResultMessageTooLarge.
	ErrMessageTooLarge = &Error{Code: ResultMessageTooLarge}
	// ErrNotFound matches errors with ResultNotFound (closed connection, unknown ticket, ...).
	ErrNotFound = &Error{Code: ResultNotFound}
	// ErrStopped matches errors with ResultStopped: the server is stopping or stopped.
	ErrStopped = &Error{Code: ResultStopped}
	// ErrIO matches errors with ResultIO.
	ErrIO = &Error{Code: ResultIO}
	// ErrInCallback matches errors with ResultInCallback.
	ErrInCallback = &Error{Code: ResultInCallback}
	// ErrPanic matches errors with ResultPanic: a bug in wspush.
	ErrPanic = &Error{Code: ResultPanic}
	// ErrUnavailable matches errors with ResultUnavailable: Redis did not confirm the publish
	// in time or is unreachable. Not "not sent": the message may still be applied, so a retry
	// may deliver it twice.
	ErrUnavailable = &Error{Code: ResultUnavailable}
)

// ErrRequestOutsideHandler is returned by Request methods called outside the handler that
// received the request: after it returned, or from another goroutine. To decide an upgrade
// later or elsewhere, call Request.Defer in the handler and pass the ticket.
var ErrRequestOutsideHandler = errors.New("wspush: Request used outside its handler (after it returned, or from another goroutine)")

// check turns a C result into nil or an *Error for op.
func check(op string, result C.wspush_result) error {
	if result == C.WSPUSH_RESULT_OK {
		return nil
	}
	return &Error{Code: Result(result), Op: op}
}
