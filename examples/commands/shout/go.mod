module plumber.dev/examples/shout

go 1.24
