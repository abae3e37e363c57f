// Native tests of __NAME__: `go test` (no WebAssembly needed).
package main

import (
	"reflect"
	"testing"

	plumber "plumber.dev/pipe"
)

func values(events []plumber.Event) []string {
	out := []string{}
	for _, e := range events {
		out = append(out, string(e.Value))
	}
	return out
}

func TestCountsEachWord(t *testing.T) {
	state := plumber.NewMemoryState()
	pipe := plumber.Registered() // what init registered
	if err := pipe.Init("{}"); err != nil {
		t.Fatal(err)
	}
	batch := plumber.NewBatch(
		plumber.NewStringEvent("ada").WithKey([]byte("k")),
		plumber.NewStringEvent("bob"),
		plumber.NewStringEvent("ada"),
	)
	out, err := pipe.Process(batch, state)
	if err != nil {
		t.Fatal(err)
	}
	if got := values(out); !reflect.DeepEqual(got, []string{"ada 1", "bob 1", "ada 2"}) {
		t.Fatalf("got %q", got)
	}
	if string(out[0].Key) != "k" {
		t.Fatalf("key not kept: %q", out[0].Key)
	}
	out, _ = pipe.Process(plumber.NewBatch(plumber.NewStringEvent("bob")), state)
	if got := values(out); !reflect.DeepEqual(got, []string{"bob 2"}) {
		t.Fatalf("got %q", got)
	}
	if n, _, _ := state.GetInt("ada"); n != 2 {
		t.Fatalf("stored count of ada: %d", n)
	}
}
