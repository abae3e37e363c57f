package plumber

import (
	"encoding/json"
	"math"
	"sort"
	"strconv"
)

// State is key/value state in the pipe's own namespace.
//
// Inside a component every call goes to the host (the *State handed to
// Process). NewMemoryState gives the same API over a map, for native unit
// tests. Keys are UTF-8 strings; integers written by Add and SetInt are
// stored as decimal ASCII text, as the host's add stores them.
type State struct {
	mem map[string][]byte // nil: the host's state
}

// Entry is one key and value of a memory state.
type Entry struct {
	Key   string
	Value []byte
}

// NewMemoryState returns an empty in-memory state, for tests.
func NewMemoryState() *State {
	return &State{mem: map[string][]byte{}}
}

// hostState is the state backed by the host's imports.
var hostState = &State{}

// Entries returns the entries of a memory state in key order (nil for the
// host's state).
func (s *State) Entries() []Entry {
	if s.mem == nil {
		return nil
	}
	out := make([]Entry, 0, len(s.mem))
	for k, v := range s.mem {
		out = append(out, Entry{Key: k, Value: append([]byte{}, v...)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// Get reads a key. found is false when it is absent; a present value is
// never nil.
func (s *State) Get(key string) (value []byte, found bool, err error) {
	if err := validKey(key); err != nil {
		return nil, false, err
	}
	if s.mem == nil {
		return hostGet(key)
	}
	v, ok := s.mem[key]
	if !ok {
		return nil, false, nil
	}
	return append([]byte{}, v...), true, nil
}

// GetMany reads many keys in one host call, in order. An absent key gives
// a nil element; a present value is never nil.
func (s *State) GetMany(keys []string) ([][]byte, error) {
	for _, k := range keys {
		if err := validKey(k); err != nil {
			return nil, err
		}
	}
	if s.mem == nil {
		return hostGetMany(keys)
	}
	out := make([][]byte, len(keys))
	for i, k := range keys {
		if v, ok := s.mem[k]; ok {
			out[i] = append([]byte{}, v...)
		}
	}
	return out, nil
}

// Set writes a key.
func (s *State) Set(key string, value []byte) error {
	if err := validKey(key); err != nil {
		return err
	}
	if s.mem == nil {
		return hostSet(key, value)
	}
	s.mem[key] = append([]byte{}, value...)
	return nil
}

// Delete removes a key; removing an absent key is not an error.
func (s *State) Delete(key string) error {
	if err := validKey(key); err != nil {
		return err
	}
	if s.mem == nil {
		return hostDelete(key)
	}
	delete(s.mem, key)
	return nil
}

// Add adds delta to the integer at key (absent counts as 0) and returns the
// new value. The stored value must be a decimal integer (else a
// StateErrorInvalid error).
func (s *State) Add(key string, delta int64) (int64, error) {
	if err := validKey(key); err != nil {
		return 0, err
	}
	if s.mem == nil {
		return hostAdd(key, delta)
	}
	return s.memAdd(key, delta)
}

// memAdd is Add on a memory state. (AddMany calls it rather than Add, so
// that a pipe using only AddMany does not link the host's add.)
func (s *State) memAdd(key string, delta int64) (int64, error) {
	var current int64
	if v, ok := s.mem[key]; ok {
		n, err := parseInteger(key, v)
		if err != nil {
			return 0, err
		}
		current = n
	}
	if (delta > 0 && current > math.MaxInt64-delta) || (delta < 0 && current < math.MinInt64-delta) {
		return 0, invalidState("adding " + strconv.FormatInt(delta, 10) + " to `" + key + "` overflows")
	}
	next := current + delta
	s.mem[key] = []byte(strconv.FormatInt(next, 10))
	return next, nil
}

// AddOp is one addition of AddMany: Delta added to the integer at Key.
type AddOp struct {
	Key   string
	Delta int64
}

// AddMany applies each addition in order, as that many Add calls would,
// and returns the new values in the same order: one host call for a whole
// batch's counters (the host reads the keys where they lie, without a copy
// per key), where Add costs a host call per key. A key repeated in ops sees
// the additions before it. On an error the additions before the failing
// one are applied (as with that many Add calls); no values are returned.
func (s *State) AddMany(ops []AddOp) ([]int64, error) {
	for i := range ops {
		if err := validKey(ops[i].Key); err != nil {
			return nil, err
		}
	}
	if s.mem == nil {
		return hostAddMany(ops)
	}
	out := make([]int64, len(ops))
	for i := range ops {
		n, err := s.memAdd(ops[i].Key, ops[i].Delta)
		if err != nil {
			return nil, err
		}
		out[i] = n
	}
	return out, nil
}

// GetString reads a value as a string.
func (s *State) GetString(key string) (string, bool, error) {
	v, ok, err := s.Get(key)
	if err != nil || !ok {
		return "", ok, err
	}
	return string(v), true, nil
}

// SetString writes a string.
func (s *State) SetString(key, value string) error {
	return s.Set(key, []byte(value))
}

// GetInt reads an integer written by Add or SetInt (decimal ASCII).
func (s *State) GetInt(key string) (int64, bool, error) {
	v, ok, err := s.Get(key)
	if err != nil || !ok {
		return 0, ok, err
	}
	n, err := parseInteger(key, v)
	if err != nil {
		return 0, true, err
	}
	return n, true, nil
}

// SetInt writes an integer as decimal ASCII, the encoding Add uses.
func (s *State) SetInt(key string, value int64) error {
	return s.Set(key, []byte(strconv.FormatInt(value, 10)))
}

// GetJSON decodes the JSON value at key into v (a pointer). found is false,
// and v untouched, when the key is absent.
func (s *State) GetJSON(key string, v any) (found bool, err error) {
	b, ok, err := s.Get(key)
	if err != nil || !ok {
		return ok, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return true, invalidState("value at `" + key + "` is not the JSON expected: " + err.Error())
	}
	return true, nil
}

// SetJSON writes v encoded as JSON.
func (s *State) SetJSON(key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return invalidState("cannot serialise value for `" + key + "`: " + err.Error())
	}
	return s.Set(key, b)
}

func parseInteger(key string, b []byte) (int64, error) {
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return 0, invalidState("value at `" + key + "` is not an integer")
	}
	return n, nil
}
