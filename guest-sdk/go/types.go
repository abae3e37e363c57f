package plumber

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Event is one record (WIT record `event`).
type Event struct {
	// Key is the optional key, used by keyed windows and partitioning.
	// nil means no key; a non-nil empty slice is a present, empty key.
	Key []byte
	// Value is the payload.
	Value []byte
	// Timestamp is milliseconds since the Unix epoch, nil when unknown.
	Timestamp *uint64
	// Headers are free-form (name, value) string pairs, in order.
	// Strings that are not valid UTF-8 reach the host with each invalid
	// byte sequence replaced by U+FFFD.
	Headers [][2]string
}

// NewEvent returns an event with this value and nothing else.
func NewEvent(value []byte) Event {
	return Event{Value: value}
}

// NewStringEvent returns an event whose value is the bytes of s.
func NewStringEvent(value string) Event {
	return Event{Value: []byte(value)}
}

// WithKey returns a copy of the event with a key.
func (e Event) WithKey(key []byte) Event {
	if key == nil {
		key = []byte{}
	}
	e.Key = key
	return e
}

// WithTimestamp returns a copy of the event with a timestamp (ms since the
// Unix epoch).
func (e Event) WithTimestamp(ms uint64) Event {
	e.Timestamp = &ms
	return e
}

// WithHeader returns a copy of the event with one more header.
func (e Event) WithHeader(name, value string) Event {
	headers := make([][2]string, len(e.Headers), len(e.Headers)+1)
	copy(headers, e.Headers)
	e.Headers = append(headers, [2]string{name, value})
	return e
}

// ValueString returns the value as a string (a copy of its bytes).
func (e Event) ValueString() string {
	return string(e.Value)
}

// KeyString returns the key as a string, and whether there is a key.
func (e Event) KeyString() (string, bool) {
	if e.Key == nil {
		return "", false
	}
	return string(e.Key), true
}

// TimestampMs returns the timestamp and whether there is one.
func (e Event) TimestampMs() (uint64, bool) {
	if e.Timestamp == nil {
		return 0, false
	}
	return *e.Timestamp, true
}

// Header returns the value of the first header named name.
func (e Event) Header(name string) (string, bool) {
	for _, h := range e.Headers {
		if h[0] == name {
			return h[1], true
		}
	}
	return "", false
}

// WindowInfo holds the bounds of the window that released a batch
// (WIT record `window-info`).
type WindowInfo struct {
	// Start is the first millisecond covered (inclusive).
	Start uint64
	// End is the last millisecond covered (exclusive).
	End uint64
	// Key is the key of a keyed window, nil otherwise.
	Key []byte
}

// Batch is the unit handed to a pipe: events, and the window they came
// from (nil outside windows).
type Batch struct {
	Events []Event
	Window *WindowInfo
}

// NewBatch returns a batch of events outside any window.
func NewBatch(events ...Event) Batch {
	return Batch{Events: events}
}

// PipeError is a pipe's failure (WIT record `pipe-error`).
//
// Return it (as *PipeError, possibly wrapped) from Init or Process to choose
// whether the host may retry, and which event failed. Any other error
// becomes a pipe-error with the error's text, not retryable, no event index.
type PipeError struct {
	// Message says what went wrong, for people.
	Message string
	// Retryable says whether processing the same input again may succeed.
	Retryable bool
	// EventIndex is the index in the batch of the event that failed, when
	// known.
	EventIndex *uint32
}

// Error returns the message.
func (e *PipeError) Error() string {
	return e.Message
}

// NewError returns an error that processing the same input again would not
// cure.
func NewError(message string) *PipeError {
	return &PipeError{Message: message}
}

// NewRetryableError returns an error that may pass when the input is
// processed again.
func NewRetryableError(message string) *PipeError {
	return &PipeError{Message: message, Retryable: true}
}

// AtEvent sets the index of the failing event and returns the error.
func (e *PipeError) AtEvent(index int) *PipeError {
	if index >= 0 && uint64(index) <= uint64(^uint32(0)) {
		i := uint32(index)
		e.EventIndex = &i
	} else {
		e.EventIndex = nil
	}
	return e
}

// StateErrorKind is the case of the WIT variant `state-error`.
type StateErrorKind uint8

const (
	// StateErrorBackend: the backend could not be reached or refused the
	// operation.
	StateErrorBackend StateErrorKind = 0
	// StateErrorInvalid: the operation was given something it cannot
	// accept (for Add: the stored value is not an integer).
	StateErrorInvalid StateErrorKind = 1
	// StateErrorLimit: a size limit of the host was exceeded.
	StateErrorLimit StateErrorKind = 2
)

// String returns the WIT name of the case.
func (k StateErrorKind) String() string {
	switch k {
	case StateErrorBackend:
		return "backend"
	case StateErrorInvalid:
		return "invalid"
	case StateErrorLimit:
		return "limit"
	}
	return "StateErrorKind(" + strconv.Itoa(int(k)) + ")"
}

// StateError is why a state operation failed (WIT variant `state-error`).
//
// Returned from Process (possibly wrapped), it becomes a pipe-error that is
// retryable for StateErrorBackend, like the Rust SDK's conversion.
type StateError struct {
	Kind    StateErrorKind
	Message string
}

// Error describes the failure with its kind.
func (e *StateError) Error() string {
	switch e.Kind {
	case StateErrorBackend:
		return "state backend: " + e.Message
	case StateErrorInvalid:
		return "invalid state operation: " + e.Message
	case StateErrorLimit:
		return "state limit: " + e.Message
	}
	return "state error (" + e.Kind.String() + "): " + e.Message
}

// PipeError converts the state error the way the host sees it when it is
// returned from Process: retryable when the backend failed.
func (e *StateError) PipeError() *PipeError {
	return &PipeError{Message: e.Error(), Retryable: e.Kind == StateErrorBackend}
}

func invalidState(message string) *StateError {
	return &StateError{Kind: StateErrorInvalid, Message: message}
}

// Level is the level of a log line (WIT enum `level`).
type Level uint8

const (
	LevelTrace Level = 0
	LevelDebug Level = 1
	LevelInfo  Level = 2
	LevelWarn  Level = 3
	LevelError Level = 4
)

// String returns the WIT name of the level.
func (l Level) String() string {
	switch l {
	case LevelTrace:
		return "trace"
	case LevelDebug:
		return "debug"
	case LevelInfo:
		return "info"
	case LevelWarn:
		return "warn"
	case LevelError:
		return "error"
	}
	return "Level(" + strconv.Itoa(int(l)) + ")"
}

// validKey reports an error for a state key the host cannot take: WIT
// strings are UTF-8, and an invalid one would trap the instance.
func validKey(key string) error {
	if !utf8.ValidString(key) {
		return invalidState("state key " + strconv.Quote(key) + " is not valid UTF-8")
	}
	return nil
}

// validUTF8 returns s with invalid UTF-8 sequences replaced by U+FFFD (s
// itself when it is valid): the host traps on invalid WIT strings.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return lossy([]byte(s))
}

// LossyString decodes b as UTF-8, replacing each maximal invalid
// subsequence with U+FFFD: the same text as Rust's String::from_utf8_lossy,
// Python's bytes.decode("utf-8", "replace") and JavaScript's TextDecoder, so
// pipes in every language derive the same strings from the same bytes.
// (strings.ToValidUTF8 differs: it collapses a run of invalid bytes into
// one U+FFFD.)
func LossyString(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return lossy(b)
}

func lossy(b []byte) string {
	var sb strings.Builder
	sb.Grow(len(b) + 8)
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		if r != utf8.RuneError || size > 1 {
			sb.Write(b[:size])
			b = b[size:]
			continue
		}
		sb.WriteRune(utf8.RuneError)
		b = b[invalidPrefix(b):]
	}
	return sb.String()
}

// invalidPrefix is the length of the maximal subpart of an ill-formed
// sequence at the start of b (Unicode, Table 3-7): a lead byte and the
// continuation bytes that are still valid for it, at least one byte.
func invalidPrefix(b []byte) int {
	var need int
	lo, hi := byte(0x80), byte(0xBF) // the second byte's range
	switch c := b[0]; {
	case c >= 0xC2 && c <= 0xDF:
		need = 1
	case c == 0xE0:
		need, lo = 2, 0xA0
	case c >= 0xE1 && c <= 0xEC, c == 0xEE, c == 0xEF:
		need = 2
	case c == 0xED:
		need, hi = 2, 0x9F
	case c == 0xF0:
		need, lo = 3, 0x90
	case c >= 0xF1 && c <= 0xF3:
		need = 3
	case c == 0xF4:
		need, hi = 3, 0x8F
	default:
		return 1
	}
	n := 1
	for i := 1; i <= need && i < len(b); i++ {
		if b[i] < lo || b[i] > hi {
			break
		}
		lo, hi = 0x80, 0xBF
		n++
	}
	return n
}
