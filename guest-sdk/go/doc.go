// Package plumber writes plumber pipes in Go.
//
// A pipe is a Go value that implements [Pipe], or a plain function given to
// [HandleFunc] (stateless) or [HandleStateful]. Register it from an init
// function of the pipe's main package:
//
//	package main
//
//	import plumber "plumber.dev/pipe"
//
//	func init() {
//		plumber.HandleFunc(func(batch plumber.Batch) ([]plumber.Event, error) {
//			return batch.Events, nil
//		})
//	}
//
//	func main() {} // required by -buildmode=c-shared, never called
//
// Registration must happen in init, not in main: the pipe is built with
// GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared (a WASI "reactor").
// The host instantiates it, which runs the exported _initialize function:
// that starts the Go runtime and runs every package's init functions, but
// never main. Then the host calls the component's init export with the
// pipe's config, and process once per batch.
//
// The same code runs natively: with GOOS unset, the WebAssembly glue is
// left out (it is behind the wasip1 build tag), and a test calls the pipe's
// methods with [NewMemoryState]. [Registered] returns what init registered.
//
// This package also holds, written once, the canonical-ABI glue of the
// plumber:pipe/stateful-pipe world for Go (see abi_wasip1.go): the init,
// process, cabi_post_*, cabi_realloc and cabi_realloc_adapter exports, and
// the imports of plumber:pipe/state and plumber:pipe/log.
package plumber
