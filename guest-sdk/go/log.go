package plumber

// Log writes a structured log line through the host.
//
// fields are alternating names and values:
//
//	plumber.Log(plumber.LevelInfo, "flushed", "events", "12", "window", "3")
//
// An odd trailing name gets an empty value. Strings that are not valid UTF-8
// are sent with invalid sequences replaced by U+FFFD. Natively (go test)
// nothing is written unless a hook is set with SetLogHook.
func Log(level Level, message string, fields ...string) {
	pairs := make([][2]string, 0, (len(fields)+1)/2)
	for i := 0; i < len(fields); i += 2 {
		value := ""
		if i+1 < len(fields) {
			value = fields[i+1]
		}
		pairs = append(pairs, [2]string{fields[i], value})
	}
	if logHook != nil {
		logHook(level, message, pairs)
	}
	hostLog(level, message, pairs)
}

var logHook func(level Level, message string, fields [][2]string)

// SetLogHook makes Log also call f (nil: no hook), e.g. to capture or print
// log lines in native tests. Inside a component the lines still go to the
// host.
func SetLogHook(f func(level Level, message string, fields [][2]string)) {
	logHook = f
}
