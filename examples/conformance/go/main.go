// The conformance pipes in Go: the same four behaviours written in every
// guest language, selected by the init config {"pipe": "<name>"}:
//
//   - transform: each value ASCII-upper-cased (only a-z change); key,
//     timestamp and headers unchanged.
//   - counter: per event n = state.Add(value, 1), done for the whole batch
//     by one state.AddMany (a state error fails the batch, with no event
//     index); emits key = value, value "<value>=<n>", timestamp and headers
//     unchanged.
//   - aggregate: per distinct value of the batch (order of first appearance)
//     with count c: total = stored + c, stored back; emits key = value,
//     value "<start>:<end>:<value>:<c>:<total>" (0:0 outside windows).
//   - fail: events pass unchanged; an event whose value is "bad" fails the
//     batch with "bad event at <index>" pointing at it.
//
// Values are used as state keys and text through plumber.LossyString, which
// decodes invalid UTF-8 like the Rust, Python and JS pipes do.
//
// Build: ./build.sh <out.wasm>  (guest-sdk/go/build.sh with this directory)
// Test:  go test
package main

import (
	"bytes"
	"encoding/json"
	"strconv"

	plumber "plumber.dev/pipe"
)

type conformance struct {
	name string
	run  func(plumber.Batch, *plumber.State) ([]plumber.Event, error)
}

func init() {
	plumber.Register(&conformance{})
}

func main() {}

func (c *conformance) Init(config string) error {
	name, err := pipeName(config)
	if err != nil {
		return err
	}
	run, ok := map[string]func(plumber.Batch, *plumber.State) ([]plumber.Event, error){
		"transform": transform,
		"counter":   counter,
		"aggregate": aggregate,
		"fail":      fail,
	}[name]
	if !ok {
		return plumber.NewError(`unknown pipe "` + name + `"`)
	}
	c.name, c.run = name, run
	return nil
}

func (c *conformance) Process(batch plumber.Batch, state *plumber.State) ([]plumber.Event, error) {
	return c.run(batch, state)
}

// pipeName is the config's "pipe" field: "" when missing, null, or when the
// config is not an object; its JSON text when it is not a string.
func pipeName(config string) (string, error) {
	var parsed any
	if err := json.Unmarshal([]byte(config), &parsed); err != nil {
		return "", plumber.NewError("invalid pipe config: " + err.Error())
	}
	object, ok := parsed.(map[string]any)
	if !ok {
		return "", nil
	}
	switch name := object["pipe"].(type) {
	case nil:
		return "", nil
	case string:
		return name, nil
	default:
		var fields map[string]json.RawMessage
		_ = json.Unmarshal([]byte(config), &fields)
		var text bytes.Buffer
		if json.Compact(&text, fields["pipe"]) != nil {
			return string(fields["pipe"]), nil
		}
		return text.String(), nil
	}
}

// upper changes only the bytes a-z.
func upper(value []byte) []byte {
	out := make([]byte, len(value))
	for i, c := range value {
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		out[i] = c
	}
	return out
}

func transform(batch plumber.Batch, _ *plumber.State) ([]plumber.Event, error) {
	out := make([]plumber.Event, len(batch.Events))
	for i, e := range batch.Events {
		e.Value = upper(e.Value)
		out[i] = e
	}
	return out, nil
}

func counter(batch plumber.Batch, state *plumber.State) ([]plumber.Event, error) {
	// One AddMany for the batch (one host call, in order: a value repeated
	// in the batch sees the additions before it), not an Add per event.
	ops := make([]plumber.AddOp, len(batch.Events))
	for i, e := range batch.Events {
		ops[i] = plumber.AddOp{Key: plumber.LossyString(e.Value), Delta: 1}
	}
	counts, err := state.AddMany(ops)
	if err != nil {
		return nil, err
	}
	// Every output value in one buffer: one allocation for the batch.
	size := 0
	for i := range ops {
		size += len(ops[i].Key) + 21 // "=" and at most 20 digits
	}
	values := make([]byte, 0, size)
	out := make([]plumber.Event, len(batch.Events))
	for i, e := range batch.Events {
		start := len(values)
		values = append(values, ops[i].Key...)
		values = append(values, '=')
		values = strconv.AppendInt(values, counts[i], 10)
		out[i] = plumber.Event{
			Key:       e.Value,
			Value:     values[start:len(values):len(values)],
			Timestamp: e.Timestamp,
			Headers:   e.Headers,
		}
	}
	return out, nil
}

func aggregate(batch plumber.Batch, state *plumber.State) ([]plumber.Event, error) {
	// Distinct values (as bytes) in order of first appearance, with counts.
	var order [][]byte
	counts := map[string]int64{}
	for _, e := range batch.Events {
		id := string(e.Value)
		if _, seen := counts[id]; !seen {
			order = append(order, e.Value)
		}
		counts[id]++
	}
	var start, end uint64
	if batch.Window != nil {
		start, end = batch.Window.Start, batch.Window.End
	}
	prefix := strconv.FormatUint(start, 10) + ":" + strconv.FormatUint(end, 10) + ":"
	out := make([]plumber.Event, 0, len(order))
	for _, value := range order {
		v := plumber.LossyString(value)
		c := counts[string(value)]
		stored, _, err := state.GetInt(v)
		if err != nil {
			return nil, err
		}
		total := stored + c
		if err := state.SetInt(v, total); err != nil {
			return nil, err
		}
		out = append(out, plumber.Event{
			Key:   value,
			Value: []byte(prefix + v + ":" + strconv.FormatInt(c, 10) + ":" + strconv.FormatInt(total, 10)),
		})
	}
	return out, nil
}

func fail(batch plumber.Batch, _ *plumber.State) ([]plumber.Event, error) {
	for i, e := range batch.Events {
		if string(e.Value) == "bad" {
			return nil, plumber.NewError("bad event at " + strconv.Itoa(i)).AtEvent(i)
		}
	}
	return batch.Events, nil
}
