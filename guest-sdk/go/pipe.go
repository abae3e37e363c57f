package plumber

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Pipe is the logic of one pipe.
//
// The host calls Init once per instance with the pipe's `config` object
// from the pipeline config (JSON text, "{}" when absent), then Process once
// per batch. An instance handles one call at a time: no locking is needed.
type Pipe interface {
	// Init prepares the pipe from its config. An error makes the host
	// refuse to start the pipeline.
	Init(config string) error
	// Process handles one batch and returns the events to pass on. An
	// error is handled by the pipe's error policy in the host.
	Process(batch Batch, state *State) ([]Event, error)
}

var (
	registered  Pipe
	initialized bool
)

// Register makes p the pipe of this component. Call it once, from an init
// function of the main package (main never runs in a pipe). A second call
// panics.
func Register(p Pipe) {
	if p == nil {
		panic("plumber.Register: nil pipe")
	}
	if registered != nil {
		panic("plumber.Register: a pipe is already registered")
	}
	registered = p
}

// Registered returns the pipe registered by Register, HandleFunc or
// HandleStateful (nil if none), e.g. for a native test of the whole
// component's behaviour.
func Registered() Pipe {
	return registered
}

// HandleFunc registers a stateless pipe: a function from a batch to the
// events to pass on. Its Init accepts any config.
func HandleFunc(f func(Batch) ([]Event, error)) {
	Register(funcPipe(func(b Batch, _ *State) ([]Event, error) { return f(b) }))
}

// HandleStateful registers a pipe made of a function that also gets the
// pipe's state. Its Init accepts any config.
func HandleStateful(f func(Batch, *State) ([]Event, error)) {
	Register(funcPipe(f))
}

// PipeFunc adapts a function to a Pipe whose Init accepts any config.
func PipeFunc(f func(Batch, *State) ([]Event, error)) Pipe {
	return funcPipe(f)
}

type funcPipe func(Batch, *State) ([]Event, error)

func (funcPipe) Init(string) error { return nil }

func (f funcPipe) Process(b Batch, s *State) ([]Event, error) { return f(b, s) }

// ParseConfig decodes a pipe's JSON config into v (a pointer), with an
// error fit to return from Init.
func ParseConfig(config string, v any) error {
	if err := json.Unmarshal([]byte(config), v); err != nil {
		return NewError("invalid pipe config: " + err.Error())
	}
	return nil
}

// AsPipeError returns the pipe-error the host receives when err is
// returned from Init or Process (nil for nil).
//
// The message is err.Error(). Retryable and EventIndex come from the first
// *PipeError in err's chain; failing that, a *StateError in the chain makes
// it retryable when the state backend failed. Any other error is not
// retryable and has no event index.
func AsPipeError(err error) *PipeError {
	if err == nil {
		return nil
	}
	out := &PipeError{Message: err.Error()}
	var pe *PipeError
	var se *StateError
	switch {
	case errors.As(err, &pe) && pe != nil:
		out.Retryable = pe.Retryable
		if pe.EventIndex != nil {
			i := *pe.EventIndex
			out.EventIndex = &i
		}
	case errors.As(err, &se) && se != nil:
		out.Retryable = se.Kind == StateErrorBackend
	}
	return out
}

// callInit runs the registered pipe's Init, turning a panic into an error.
func callInit(config string) (perr *PipeError) {
	defer func() {
		if r := recover(); r != nil {
			perr = &PipeError{Message: fmt.Sprintf("pipe panicked in init: %v", r)}
		}
	}()
	initialized = false
	if registered == nil {
		return NewError("no pipe registered: call plumber.Register, plumber.HandleFunc " +
			"or plumber.HandleStateful from an init function of package main")
	}
	if err := registered.Init(config); err != nil {
		return AsPipeError(err)
	}
	initialized = true
	return nil
}

// callProcess runs the registered pipe's Process, turning a panic into an
// error (the instance stays usable; the host applies the error policy).
func callProcess(batch Batch, state *State) (events []Event, perr *PipeError) {
	defer func() {
		if r := recover(); r != nil {
			events = nil
			perr = &PipeError{Message: fmt.Sprintf("pipe panicked: %v", r)}
		}
	}()
	if registered == nil || !initialized {
		return nil, NewError("process called before init")
	}
	out, err := registered.Process(batch, state)
	if err != nil {
		return nil, AsPipeError(err)
	}
	return out, nil
}
