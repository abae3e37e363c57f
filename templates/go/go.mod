module __NAME__

go 1.24

require plumber.dev/pipe v0.0.0

// The plumber Go SDK, from the plumber source tree (standard library only).
replace plumber.dev/pipe => __SDK__
