package plumber

// The packed batch of the `process-packed` export: a whole batch in one
// byte buffer each way (the encoding of the host's plumber-wire crate), so
// that a batch costs one copy across the boundary instead of the canonical
// ABI's record per event and list per field. Little-endian throughout:
//
//	batch  := version:u8 (= 1)  window  count:u32  event*count
//	window := 0                                       no window
//	        | 1 start:u64 end:u64                     a window
//	        | 2 start:u64 end:u64 len:u32 key[len]    a keyed window
//	event  := flags:u8 (bit 0: key, bit 1: timestamp)
//	          [len:u32 key[len]]  len:u32 value[len]  [timestamp:u64]
//	          headers:u32 (len:u32 name[len] len:u32 value[len])*headers
//
// The answer is a batch in the same encoding (its window is ignored).

import (
	"encoding/binary"
	"strconv"
	"unsafe"
)

const (
	packedVersion      = 1
	packedFlagKey      = 1
	packedFlagStamp    = 2
	packedMinEventSize = 1 + 4 + 4
)

// packedReader walks a packed batch; the first bad offset ends it.
type packedReader struct {
	buf []byte
	at  int
	err *PipeError
}

func (r *packedReader) fail(what string) {
	if r.err == nil {
		r.err = NewError("malformed packed batch at byte " + strconv.Itoa(r.at) + ": " + what)
	}
}

func (r *packedReader) u8(what string) uint8 {
	if r.err != nil || r.at+1 > len(r.buf) {
		r.fail(what)
		return 0
	}
	v := r.buf[r.at]
	r.at++
	return v
}

func (r *packedReader) u32(what string) uint32 {
	if r.err != nil || r.at+4 > len(r.buf) {
		r.fail(what)
		return 0
	}
	v := binary.LittleEndian.Uint32(r.buf[r.at:])
	r.at += 4
	return v
}

func (r *packedReader) u64(what string) uint64 {
	if r.err != nil || r.at+8 > len(r.buf) {
		r.fail(what)
		return 0
	}
	v := binary.LittleEndian.Uint64(r.buf[r.at:])
	r.at += 8
	return v
}

// bytes returns the next length-prefixed bytes as a slice of the buffer,
// capped so that appending to it copies instead of overwriting what follows.
func (r *packedReader) bytes(what string) []byte {
	n := int(r.u32(what + " length"))
	if r.err != nil || n > len(r.buf)-r.at {
		r.fail(what)
		return nil
	}
	b := r.buf[r.at : r.at+n : r.at+n]
	r.at += n
	return b
}

// str is bytes as a string sharing the buffer: header bytes are reachable
// only through these strings, so nothing writes to them afterwards.
func (r *packedReader) str(what string) string {
	b := r.bytes(what)
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// decodePacked decodes a packed batch whose keys and values are slices of
// packed (which the caller hands over: it must not change it afterwards).
func decodePacked(packed []byte) (Batch, *PipeError) {
	r := packedReader{buf: packed}
	if v := r.u8("version"); r.err == nil && v != packedVersion {
		r.fail("unknown version " + strconv.Itoa(int(v)))
	}
	var batch Batch
	switch tag := r.u8("window tag"); {
	case r.err != nil, tag == 0:
	case tag == 1 || tag == 2:
		w := &WindowInfo{Start: r.u64("window start"), End: r.u64("window end")}
		if tag == 2 {
			w.Key = r.bytes("window key")
		}
		batch.Window = w
	default:
		r.fail("unknown window tag " + strconv.Itoa(int(tag)))
	}
	count := int(r.u32("event count"))
	if r.err == nil && count > (len(packed)-r.at)/packedMinEventSize {
		r.fail("event count " + strconv.Itoa(count) + " larger than the bytes left")
	}
	if r.err != nil {
		return Batch{}, r.err
	}
	// One array for the events and one for their timestamps.
	events := make([]Event, count)
	var stamps []uint64
	for i := range events {
		e := &events[i]
		flags := r.u8("event flags")
		if flags&packedFlagKey != 0 {
			e.Key = r.bytes("key")
		}
		e.Value = r.bytes("value")
		if e.Value == nil {
			e.Value = []byte{}
		}
		if flags&packedFlagStamp != 0 {
			if stamps == nil {
				stamps = make([]uint64, count-i)
			}
			stamps[0] = r.u64("timestamp")
			e.Timestamp = &stamps[0]
			stamps = stamps[1:]
		}
		if n := int(r.u32("header count")); n > 0 {
			if r.err == nil && n > (len(packed)-r.at)/8 {
				r.fail("header count larger than the bytes left")
				break
			}
			headers := make([][2]string, n)
			for j := range headers {
				headers[j] = [2]string{r.str("header name"), r.str("header value")}
			}
			e.Headers = headers
		}
		if r.err != nil {
			return Batch{}, r.err
		}
	}
	if r.err != nil {
		return Batch{}, r.err
	}
	batch.Events = events
	return batch, nil
}

// packedSize is the length of events encoded as a packed batch.
func packedSize(events []Event) int {
	size := 1 + 1 + 4
	for i := range events {
		e := &events[i]
		size += 1 + 4 + len(e.Value) + 4
		if e.Key != nil {
			size += 4 + len(e.Key)
		}
		if e.Timestamp != nil {
			size += 8
		}
		for _, h := range e.Headers {
			size += 8 + len(validUTF8(h[0])) + len(validUTF8(h[1]))
		}
	}
	return size
}

// encodePacked writes events as a packed batch (no window) into dst, which
// is packedSize(events) bytes long.
func encodePacked(dst []byte, events []Event) {
	dst[0] = packedVersion
	dst[1] = 0
	binary.LittleEndian.PutUint32(dst[2:], uint32(len(events)))
	at := 6
	putBytes := func(b []byte) {
		binary.LittleEndian.PutUint32(dst[at:], uint32(len(b)))
		at += 4 + copy(dst[at+4:], b)
	}
	putString := func(s string) {
		binary.LittleEndian.PutUint32(dst[at:], uint32(len(s)))
		at += 4 + copy(dst[at+4:], s)
	}
	for i := range events {
		e := &events[i]
		var flags byte
		if e.Key != nil {
			flags |= packedFlagKey
		}
		if e.Timestamp != nil {
			flags |= packedFlagStamp
		}
		dst[at] = flags
		at++
		if e.Key != nil {
			putBytes(e.Key)
		}
		putBytes(e.Value)
		if e.Timestamp != nil {
			binary.LittleEndian.PutUint64(dst[at:], *e.Timestamp)
			at += 8
		}
		binary.LittleEndian.PutUint32(dst[at:], uint32(len(e.Headers)))
		at += 4
		for _, h := range e.Headers {
			putString(validUTF8(h[0]))
			putString(validUTF8(h[1]))
		}
	}
}
