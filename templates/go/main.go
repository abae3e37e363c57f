// __NAME__: a plumber pipe that counts words. For each event:
// n = state.Add(<value>, 1), and out goes "<value> <n>" (key, timestamp and
// headers kept).
//
// Built with GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared into a
// WebAssembly component (see README.md); tested natively with `go test`.
package main

import (
	"strconv"

	plumber "plumber.dev/pipe"
)

// WordCount is the pipe. Init gets the pipe's "config" object from the
// pipeline as JSON text; Process gets each batch and the pipe's state.
type WordCount struct{}

func (*WordCount) Init(config string) error {
	// For a config, declare a struct and: return plumber.ParseConfig(config, &cfg)
	return nil
}

func (*WordCount) Process(batch plumber.Batch, state *plumber.State) ([]plumber.Event, error) {
	out := make([]plumber.Event, 0, len(batch.Events))
	for i, e := range batch.Events {
		word := plumber.LossyString(e.Value) // invalid UTF-8 becomes U+FFFD
		n, err := state.Add(word, 1)
		if err != nil {
			return nil, plumber.AsPipeError(err).AtEvent(i)
		}
		e.Value = []byte(word + " " + strconv.FormatInt(n, 10))
		out = append(out, e)
	}
	return out, nil
}

// Registration happens in init: a pipe is a WASI reactor, whose start-up
// runs the package init functions but never main.
func init() {
	plumber.Register(&WordCount{})
}

// main is required by -buildmode=c-shared and never runs.
func main() {}
