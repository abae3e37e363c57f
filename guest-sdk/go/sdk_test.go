package plumber

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestTypedHelpersRoundTripInMemory(t *testing.T) {
	s := NewMemoryState()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.SetString("name", "ada"))
	if v, ok, err := s.GetString("name"); v != "ada" || !ok || err != nil {
		t.Fatalf("GetString: %q %v %v", v, ok, err)
	}
	must(s.SetInt("n", 40))
	if n, err := s.Add("n", 2); n != 42 || err != nil {
		t.Fatalf("Add: %d %v", n, err)
	}
	if n, ok, err := s.GetInt("n"); n != 42 || !ok || err != nil {
		t.Fatalf("GetInt: %d %v %v", n, ok, err)
	}
	if n, err := s.Add("fresh", -3); n != -3 || err != nil {
		t.Fatalf("Add on absent: %d %v", n, err)
	}
	type point struct {
		X int
		Y string
	}
	must(s.SetJSON("point", point{1, "x"}))
	var p point
	if ok, err := s.GetJSON("point", &p); !ok || err != nil || p != (point{1, "x"}) {
		t.Fatalf("GetJSON: %v %v %+v", ok, err, p)
	}
	if ok, err := s.GetJSON("absent", &p); ok || err != nil {
		t.Fatalf("GetJSON absent: %v %v", ok, err)
	}
	must(s.Set("empty", []byte{}))
	got, err := s.GetMany([]string{"name", "absent", "empty"})
	if err != nil || string(got[0]) != "ada" || got[1] != nil || got[2] == nil || len(got[2]) != 0 {
		t.Fatalf("GetMany: %q %v", got, err)
	}
	must(s.Delete("name"))
	must(s.Delete("name"))
	if _, ok, _ := s.Get("name"); ok {
		t.Fatal("deleted key still there")
	}
	keys := []string{}
	for _, e := range s.Entries() {
		keys = append(keys, e.Key)
	}
	if !reflect.DeepEqual(keys, []string{"empty", "fresh", "n", "point"}) {
		t.Fatalf("Entries: %q", keys)
	}
	// Values are copies.
	v, _, _ := s.Get("n")
	v[0] = 'x'
	if n, _, _ := s.GetInt("n"); n != 42 {
		t.Fatal("Get returned the stored slice")
	}
}

func kind(err error) StateErrorKind {
	var se *StateError
	if !errors.As(err, &se) {
		return 255
	}
	return se.Kind
}

func TestTypeMismatchesAreErrorsNotPanics(t *testing.T) {
	s := NewMemoryState()
	_ = s.Set("text", []byte("not a number"))
	if _, err := s.Add("text", 1); kind(err) != StateErrorInvalid {
		t.Fatalf("Add on text: %v", err)
	}
	if _, _, err := s.GetInt("text"); kind(err) != StateErrorInvalid {
		t.Fatalf("GetInt on text: %v", err)
	}
	var x struct{ A int }
	if _, err := s.GetJSON("text", &x); kind(err) != StateErrorInvalid {
		t.Fatalf("GetJSON on text: %v", err)
	}
	if err := s.SetJSON("f", func() {}); kind(err) != StateErrorInvalid {
		t.Fatalf("SetJSON of a func: %v", err)
	}
	_ = s.SetInt("max", 1<<63-1)
	if _, err := s.Add("max", 1); kind(err) != StateErrorInvalid {
		t.Fatalf("overflow: %v", err)
	}
	if err := s.Set("bad\xff", nil); kind(err) != StateErrorInvalid {
		t.Fatalf("invalid UTF-8 key: %v", err)
	}
}

func TestHostStateOutsideWasmSaysSo(t *testing.T) {
	_, _, err := hostState.Get("k")
	if kind(err) != StateErrorBackend || !strings.Contains(err.Error(), "NewMemoryState") {
		t.Fatalf("host state natively: %v", err)
	}
}

func TestAsPipeError(t *testing.T) {
	if AsPipeError(nil) != nil {
		t.Fatal("nil error became a pipe error")
	}
	plain := AsPipeError(errors.New("boom"))
	if plain.Message != "boom" || plain.Retryable || plain.EventIndex != nil {
		t.Fatalf("plain: %+v", plain)
	}
	wrapped := AsPipeError(fmt.Errorf("ctx: %w", NewRetryableError("down").AtEvent(3)))
	if wrapped.Message != "ctx: down" || !wrapped.Retryable || *wrapped.EventIndex != 3 {
		t.Fatalf("wrapped: %+v", wrapped)
	}
	backend := AsPipeError(&StateError{Kind: StateErrorBackend, Message: "gone"})
	if backend.Message != "state backend: gone" || !backend.Retryable {
		t.Fatalf("state backend: %+v", backend)
	}
	limit := AsPipeError(&StateError{Kind: StateErrorLimit, Message: "big"})
	if limit.Message != "state limit: big" || limit.Retryable {
		t.Fatalf("state limit: %+v", limit)
	}
}

func TestRegistrationAndCalls(t *testing.T) {
	defer func() { registered, initialized = nil, false }()
	registered, initialized = nil, false
	if _, perr := callProcess(NewBatch(), NewMemoryState()); perr == nil || perr.Message != "process called before init" {
		t.Fatalf("process before init: %+v", perr)
	}
	if perr := callInit("{}"); perr == nil || !strings.Contains(perr.Message, "no pipe registered") {
		t.Fatalf("init without a pipe: %+v", perr)
	}
	HandleStateful(func(b Batch, s *State) ([]Event, error) {
		if len(b.Events) == 0 {
			panic("empty")
		}
		n, err := s.Add("seen", int64(len(b.Events)))
		return []Event{NewStringEvent(fmt.Sprint(n))}, err
	})
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("second registration accepted")
			}
		}()
		HandleFunc(func(b Batch) ([]Event, error) { return nil, nil })
	}()
	if perr := callInit("{}"); perr != nil {
		t.Fatal(perr)
	}
	s := NewMemoryState()
	out, perr := callProcess(NewBatch(NewStringEvent("a"), NewStringEvent("b")), s)
	if perr != nil || string(out[0].Value) != "2" {
		t.Fatalf("process: %q %+v", values(out), perr)
	}
	if _, perr := callProcess(NewBatch(), s); perr == nil || perr.Message != "pipe panicked: empty" {
		t.Fatalf("panic: %+v", perr)
	}
}

func values(events []Event) []string {
	out := []string{}
	for _, e := range events {
		out = append(out, string(e.Value))
	}
	return out
}

func TestEventHelpers(t *testing.T) {
	e := NewStringEvent("v").WithKey(nil).WithTimestamp(9).WithHeader("a", "1").WithHeader("b", "2")
	if k, ok := e.KeyString(); !ok || k != "" {
		t.Fatal("WithKey(nil) must give a present, empty key")
	}
	if ts, ok := e.TimestampMs(); !ok || ts != 9 {
		t.Fatal("timestamp")
	}
	if v, ok := e.Header("b"); !ok || v != "2" {
		t.Fatal("header")
	}
	if _, ok := NewEvent(nil).KeyString(); ok {
		t.Fatal("key on a new event")
	}
}

func TestLog(t *testing.T) {
	var got []string
	SetLogHook(func(l Level, m string, f [][2]string) { got = append(got, fmt.Sprint(l, m, f)) })
	defer SetLogHook(nil)
	Log(LevelWarn, "hi", "a", "1", "b")
	if !reflect.DeepEqual(got, []string{"warnhi[[a 1] [b ]]"}) {
		t.Fatalf("%q", got)
	}
}

func TestLossyStringMatchesOtherLanguages(t *testing.T) {
	// Expected values from Python's bytes.decode("utf-8", "replace").
	for in, want := range map[string]string{
		"a\xffb":             "a\uFFFDb",
		"\xff\xff":           "\uFFFD\uFFFD",
		"\xe2\x82":           "\uFFFD",
		"\xe2\x82a":          "\uFFFDa",
		"\xed\xa0\x80":       "\uFFFD\uFFFD\uFFFD",
		"\xf0\x9f\x98":       "\uFFFD",
		"\xf4\x90\x80\x80":   "\uFFFD\uFFFD\uFFFD\uFFFD",
		"\xc0\xaf":           "\uFFFD\uFFFD",
		"\xe0\x80\xaf":       "\uFFFD\uFFFD\uFFFD",
		"ok\xf0\x9f\x98\x80": "ok😀",
	} {
		if got := LossyString([]byte(in)); got != want {
			t.Errorf("LossyString(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestAddManyAppliesInOrderAsAddWould(t *testing.T) {
	many, one := NewMemoryState(), NewMemoryState()
	if err := many.SetInt("b", 10); err != nil {
		t.Fatal(err)
	}
	if err := one.SetInt("b", 10); err != nil {
		t.Fatal(err)
	}
	ops := []AddOp{{"a", 1}, {"b", 2}, {"a", 1}, {"c", -5}, {"a", 3}}
	got, err := many.AddMany(ops)
	if err != nil {
		t.Fatal(err)
	}
	// The reference: one Add per operation.
	want := make([]int64, len(ops))
	for i, op := range ops {
		if want[i], err = one.Add(op.Key, op.Delta); err != nil {
			t.Fatal(err)
		}
	}
	if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(many.Entries(), one.Entries()) {
		t.Fatalf("AddMany %v, state %v; Add %v, state %v", got, many.Entries(), want, one.Entries())
	}
	if got, err := many.AddMany(nil); err != nil || len(got) != 0 {
		t.Fatalf("empty AddMany: %v %v", got, err)
	}
	// A bad key fails the call before anything is added.
	if _, err := many.AddMany([]AddOp{{"a", 1}, {"\xff", 1}}); err == nil {
		t.Fatal("invalid UTF-8 key accepted")
	}
	if n, _, _ := many.GetInt("a"); n != 5 {
		t.Fatalf("a = %d after a refused AddMany", n)
	}
	// The host's state outside WebAssembly says so.
	if _, err := hostState.AddMany([]AddOp{{"a", 1}}); err == nil {
		t.Fatal("host AddMany outside WebAssembly succeeded")
	}
}

func TestPackedBatchesRoundTrip(t *testing.T) {
	stamp := uint64(1_800_000_000_000)
	events := []Event{
		{Key: []byte("k1"), Value: []byte("ada"), Timestamp: &stamp, Headers: [][2]string{{"h", "v"}, {"x", ""}}},
		{Value: []byte{}},
		{Key: []byte{}, Value: []byte{0xff, 'x'}},
		{Value: []byte("bad header"), Headers: [][2]string{{"n\xff", "v"}}},
	}
	buf := make([]byte, packedSize(events))
	encodePacked(buf, events)
	// The first event written out by hand, as plumber-wire lays it out.
	head := []byte{1, 0, 4, 0, 0, 0, 3, 2, 0, 0, 0, 'k', '1', 3, 0, 0, 0, 'a', 'd', 'a'}
	if !reflect.DeepEqual(buf[:len(head)], head) {
		t.Fatalf("encoding starts %v, want %v", buf[:len(head)], head)
	}
	batch, perr := decodePacked(buf)
	if perr != nil {
		t.Fatal(perr)
	}
	want := append([]Event{}, events...)
	want[3].Headers = [][2]string{{"n\uFFFD", "v"}}
	if !reflect.DeepEqual(batch.Events, want) || batch.Window != nil {
		t.Fatalf("decoded %+v, want %+v", batch.Events, want)
	}
	// Appending to a decoded value must not overwrite the next event.
	_ = append(batch.Events[0].Value, "!!!!!!!!"...)
	if string(batch.Events[1].Value) != "" || batch.Events[2].Key == nil {
		t.Fatalf("append overwrote the buffer: %+v", batch.Events)
	}

	// A keyed window.
	win := []byte{1, 2, 5, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 'w', 0, 0, 0, 0}
	batch, perr = decodePacked(win)
	if perr != nil || batch.Window == nil || batch.Window.Start != 5 || batch.Window.End != 9 ||
		string(batch.Window.Key) != "w" || len(batch.Events) != 0 {
		t.Fatalf("window batch: %+v %v", batch, perr)
	}

	// Every truncation is an error naming its byte, never a panic.
	for n := 0; n < len(buf); n++ {
		if _, perr := decodePacked(buf[:n]); perr == nil || !strings.Contains(perr.Message, "malformed packed batch at byte") {
			t.Fatalf("truncated to %d bytes: %v", n, perr)
		}
	}
	if _, perr := decodePacked([]byte{2, 0, 0, 0, 0, 0}); perr == nil || !strings.Contains(perr.Message, "unknown version 2") {
		t.Fatalf("version 2: %v", perr)
	}
}
