package main

import (
	"reflect"
	"testing"

	plumber "plumber.dev/pipe"
)

func newPipe(t *testing.T, name string) plumber.Pipe {
	t.Helper()
	p := &conformance{}
	if err := p.Init(`{"pipe":"` + name + `"}`); err != nil {
		t.Fatalf("init %s: %v", name, err)
	}
	return p
}

func values(events []plumber.Event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = string(e.Value)
	}
	return out
}

func batchOf(vs ...string) plumber.Batch {
	b := plumber.NewBatch()
	for _, v := range vs {
		b.Events = append(b.Events, plumber.NewStringEvent(v))
	}
	return b
}

func TestRegistered(t *testing.T) {
	if _, ok := plumber.Registered().(*conformance); !ok {
		t.Fatalf("registered pipe is %T", plumber.Registered())
	}
}

func TestTransform(t *testing.T) {
	p := newPipe(t, "transform")
	in := plumber.NewBatch(
		plumber.NewStringEvent("abc").WithKey([]byte("k")).WithTimestamp(7).WithHeader("h", "v"),
		plumber.NewStringEvent("Ü-x"),
	)
	out, err := p.Process(in, plumber.NewMemoryState())
	if err != nil {
		t.Fatal(err)
	}
	if got := values(out); !reflect.DeepEqual(got, []string{"ABC", "Ü-X"}) {
		t.Fatalf("values %q", got)
	}
	if string(out[0].Key) != "k" || *out[0].Timestamp != 7 || out[0].Headers[0] != [2]string{"h", "v"} {
		t.Fatalf("key, timestamp or headers changed: %+v", out[0])
	}
	if out[1].Key != nil || out[1].Timestamp != nil || len(out[1].Headers) != 0 {
		t.Fatalf("fields appeared: %+v", out[1])
	}
}

func TestCounter(t *testing.T) {
	p := newPipe(t, "counter")
	state := plumber.NewMemoryState()
	in := batchOf("ada", "bob", "ada")
	in.Events[0] = in.Events[0].WithTimestamp(5).WithHeader("h", "v")
	out, err := p.Process(in, state)
	if err != nil {
		t.Fatal(err)
	}
	if got := values(out); !reflect.DeepEqual(got, []string{"ada=1", "bob=1", "ada=2"}) {
		t.Fatalf("values %q", got)
	}
	if string(out[1].Key) != "bob" || *out[0].Timestamp != 5 || out[0].Headers[0] != [2]string{"h", "v"} {
		t.Fatalf("key, timestamp or headers: %+v", out[0])
	}
	out, _ = p.Process(batchOf("ada"), state)
	if got := values(out); !reflect.DeepEqual(got, []string{"ada=3"}) {
		t.Fatalf("second batch %q", got)
	}
	// A stored value that is not an integer fails the batch (one AddMany
	// for it: no event index).
	_ = state.Set("eve", []byte("x"))
	_, err = p.Process(batchOf("ada", "eve"), state)
	perr := plumber.AsPipeError(err)
	if perr == nil || perr.EventIndex != nil || perr.Retryable ||
		perr.Message != "invalid state operation: value at `eve` is not an integer" {
		t.Fatalf("error %+v", perr)
	}
}

func TestAggregate(t *testing.T) {
	p := newPipe(t, "aggregate")
	state := plumber.NewMemoryState()
	in := batchOf("x", "y", "x")
	in.Window = &plumber.WindowInfo{Start: 10, End: 20}
	out, err := p.Process(in, state)
	if err != nil {
		t.Fatal(err)
	}
	if got := values(out); !reflect.DeepEqual(got, []string{"10:20:x:2:2", "10:20:y:1:1"}) {
		t.Fatalf("values %q", got)
	}
	if string(out[0].Key) != "x" || out[0].Timestamp != nil || out[0].Headers != nil {
		t.Fatalf("event %+v", out[0])
	}
	out, _ = p.Process(batchOf("x"), state)
	if got := values(out); !reflect.DeepEqual(got, []string{"0:0:x:1:3"}) {
		t.Fatalf("no window %q", got)
	}
	if v, _, _ := state.GetString("x"); v != "3" {
		t.Fatalf("stored %q", v)
	}
}

func TestFail(t *testing.T) {
	p := newPipe(t, "fail")
	out, err := p.Process(batchOf("a", "b"), plumber.NewMemoryState())
	if err != nil || !reflect.DeepEqual(values(out), []string{"a", "b"}) {
		t.Fatalf("pass-through: %q %v", values(out), err)
	}
	_, err = p.Process(batchOf("ok", "bad", "bad"), plumber.NewMemoryState())
	perr := plumber.AsPipeError(err)
	if perr.Message != "bad event at 1" || perr.Retryable || perr.EventIndex == nil || *perr.EventIndex != 1 {
		t.Fatalf("error %+v", perr)
	}
}

func TestUnknownPipe(t *testing.T) {
	for config, want := range map[string]string{
		`{"pipe":"nope"}`: `unknown pipe "nope"`,
		`{}`:              `unknown pipe ""`,
		`{"pipe":null}`:   `unknown pipe ""`,
		`[]`:              `unknown pipe ""`,
		`{"pipe":12}`:     `unknown pipe "12"`,
	} {
		err := (&conformance{}).Init(config)
		if perr := plumber.AsPipeError(err); perr == nil || perr.Message != want || perr.Retryable {
			t.Errorf("%s: got %+v, want %q", config, perr, want)
		}
	}
	if err := (&conformance{}).Init(`{`); err == nil {
		t.Error("invalid JSON accepted")
	}
}

func TestLossyValues(t *testing.T) {
	p := newPipe(t, "counter")
	out, err := p.Process(plumber.NewBatch(plumber.NewEvent([]byte("a\xffb"))), plumber.NewMemoryState())
	if err != nil {
		t.Fatal(err)
	}
	if string(out[0].Value) != "a\uFFFDb=1" || string(out[0].Key) != "a\xffb" {
		t.Fatalf("event %q key %q", out[0].Value, out[0].Key)
	}
}
