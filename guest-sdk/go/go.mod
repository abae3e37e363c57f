module plumber.dev/pipe

go 1.24
