module plumber.dev/examples/conformance

go 1.24

require plumber.dev/pipe v0.0.0

replace plumber.dev/pipe => ../../../guest-sdk/go
