// Command shout is a command pipe: a plain WASI preview 1 program (built
// with `GOOS=wasip1 GOARCH=wasm go build`) that reads one event per line on
// stdin and answers each with one line on stdout: the value upper-cased
// with "!" appended. A line "exit" makes it exit with status 3, a line
// "spin" makes it loop forever, and "read:<path>" tries to read a file
// (for the host's tests of the sandbox).
package main

import (
	"bufio"
	"os"
	"strings"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	out := bufio.NewWriter(os.Stdout)
	for in.Scan() {
		line := in.Text()
		switch line {
		case "exit":
			out.Flush()
			os.Exit(3)
		case "spin":
			for {
			}
		}
		if path, ok := strings.CutPrefix(line, "read:"); ok {
			if _, err := os.ReadFile(path); err != nil {
				out.WriteString("read failed\n")
			} else {
				out.WriteString("read ok\n")
			}
			out.Flush()
			continue
		}
		out.WriteString(strings.ToUpper(line) + "!\n")
		// One answer per line, flushed at once: the host waits for it.
		out.Flush()
	}
}
