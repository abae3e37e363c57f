//go:build !wasip1

package plumber

// Natively (unit tests) there is no host: only NewMemoryState is usable,
// and the host's state reports that.

func noHost() error {
	return &StateError{
		Kind:    StateErrorBackend,
		Message: "no plumber host outside WebAssembly: use plumber.NewMemoryState()",
	}
}

func hostGet(string) ([]byte, bool, error)   { return nil, false, noHost() }
func hostGetMany([]string) ([][]byte, error) { return nil, noHost() }
func hostSet(string, []byte) error           { return noHost() }
func hostDelete(string) error                { return noHost() }
func hostAdd(string, int64) (int64, error)   { return 0, noHost() }
func hostAddMany([]AddOp) ([]int64, error)   { return nil, noHost() }
func hostLog(Level, string, [][2]string)     {}
