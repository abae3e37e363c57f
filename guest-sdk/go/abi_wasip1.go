//go:build wasip1

// The canonical-ABI glue of the world plumber:pipe/stateful-pipe@0.1.1 for
// Go's wasip1 c-shared ("reactor") modules, written by hand once.
//
// Lowered signatures (32-bit memory; a function whose results flatten to
// more than one core value returns them through memory: an export returns a
// pointer to its return area, an import takes one as its last parameter):
//
//	export init(config: string) -> result<_, pipe-error>
//	    core: (i32 ptr, i32 len) -> i32 retptr
//	export process(batch: batch) -> result<list<event>, pipe-error>
//	    core: (i32 events.ptr, i32 events.len,
//	           i32 window.tag, i64 start, i64 end, i32 key.tag, i32 key.ptr, i32 key.len) -> i32 retptr
//	export cabi_post_init(i32), cabi_post_process(i32)
//	export cabi_realloc(i32 old, i32 old_size, i32 align, i32 new_size) -> i32
//	export cabi_realloc_adapter: the same, used only by the WASI adapter
//	import plumber:pipe/state@0.1.1
//	    get      (i32 key.ptr, i32 key.len, i32 retptr)
//	    get-many (i32 keys.ptr, i32 keys.len, i32 retptr)
//	    set      (i32 key.ptr, i32 key.len, i32 value.ptr, i32 value.len, i32 retptr)
//	    delete   (i32 key.ptr, i32 key.len, i32 retptr)
//	    add      (i32 key.ptr, i32 key.len, i64 delta, i32 retptr)
//	import plumber:pipe/log@0.1.1
//	    log      (i32 level, i32 msg.ptr, i32 msg.len, i32 fields.ptr, i32 fields.len)
//
// Memory layouts (offset: field), all little-endian:
//
//	event (size 48, align 8): 0 key.tag u8, 4 key.ptr, 8 key.len, 12 value.ptr,
//	    16 value.len, 24 timestamp.tag u8, 32 timestamp u64, 40 headers.ptr, 44 headers.len
//	tuple<string,string> (16, 4): 0 a.ptr, 4 a.len, 8 b.ptr, 12 b.len
//	pipe-error (20, 4): 0 message.ptr, 4 message.len, 8 retryable u8,
//	    12 event-index.tag u8, 16 event-index u32
//	result<_, pipe-error> / result<list<event>, pipe-error> (24, 4):
//	    0 tag u8, 4 payload (list: 4 ptr, 8 len; error: pipe-error at 4)
//	state-error (12, 4): 0 tag u8 (0 backend, 1 invalid, 2 limit), 4 msg.ptr, 8 msg.len
//	result<option<list<u8>>, state-error> (16, 4): 0 tag, 4 option tag, 8 ptr, 12 len | 4 state-error
//	result<list<option<list<u8>>>, state-error> (16, 4): 0 tag, 4 ptr, 8 len | 4 state-error
//	    option<list<u8>> (12, 4): 0 tag, 4 ptr, 8 len
//	result<_, state-error> (16, 4): 0 tag, 4 state-error
//	result<s64, state-error> (24, 8): 0 tag, 8 s64 | 8 state-error
//
// Memory the host writes into (export arguments, import results) comes from
// cabi_realloc, which never calls Go's allocator:
//
//  1. The WASI adapter allocates its state through the module's realloc
//     while the Go runtime is still starting (inside _initialize), where
//     calling into Go's allocator recursed until an out-of-bounds trap. It
//     gets cabi_realloc_adapter, a bump allocator over a static array; so
//     does cabi_realloc until this package's init has run.
//  2. While the host lowers values into the guest, the guest may not call
//     imports ("cannot leave component instance"), and Go's allocator may
//     read the WASI clock (e.g. mheap.allocSpan scavenges on heap growth and
//     times it with nanotime -> clock_time_get) or start a GC. Switching the
//     GC off does not prevent the scavenging. So cabi_realloc hands out:
//     a. space from the arena: a Go []uint64 allocated while Go code is in
//        control, bump-allocated, reset once the values are copied into Go
//        memory. At the end of each export call, if the largest lowering
//        window came within half of the arena, the arena is replaced by one
//        that covers twice that (up to maxArenaBytes): the arena follows the
//        workload, and what follows is for spikes;
//     b. past that, space from the overflow area: linear memory grown with
//        memory.grow beyond the end of Go's heap (mem_wasip1_wasm.s). Go's
//        runtime (runtime/mem_sbrk.go) owns memory up to its break and, when
//        it needs more, grows the memory by what it needs and takes the range
//        right after its old break; so everything we grew stays after Go's
//        heap, which ends at memory size - grown, and moves up into it as Go
//        grows. Before Go may allocate again (the first thing the export body
//        or the import wrapper does), settle() checks that the values lie at
//        least 2*size+overflowMargin above Go's heap (copying the values
//        there otherwise), so that copying them into Go memory cannot grow
//        the heap into them; after the copy the area is zeroed, as Go expects
//        memory past its break to be. The grown memory stays reserved for the
//        next spike (it counts against the host's memory limit).
//
// Results handed to the host (the event list, an error's message) are
// lowered into a Go buffer that stays referenced until cabi_post_* runs.

package plumber

import (
	"runtime"
	"unsafe"
)

const (
	staticArenaBytes  = 256 << 10
	initialArenaBytes = 2 << 20 // covers one state value at the host's default 1 MiB limit
	maxArenaBytes     = 64 << 20
	// Room left between Go's heap and overflow values, beyond twice their
	// size: Go's heap grows in 4 MiB chunks, plus metadata and stacks.
	overflowMargin = 16 << 20
	wasmPage       = 64 << 10
	// An out buffer larger than this is dropped after the call.
	keepOutBytes = 4 << 20
)

var (
	// For the adapter and for anything before this package's init.
	staticArena [staticArenaBytes / 8]uint64
	staticUsed  uintptr

	// ready: the dynamic arena exists.
	ready bool

	arena       []uint64
	arenaBase   uintptr
	arenaEnd    uintptr
	arenaNext   uintptr
	windowBytes uintptr // handed out since the last reset, arena and overflow
	highWater   uintptr // largest windowBytes since the last arenaPrepare

	// The overflow area: grown is what memoryGrow added in all (Go's heap
	// ends at memory size - grown); [ovBase, ovNext) is in use by the
	// current window.
	grown     uintptr
	ovActive  bool
	ovBase    uintptr
	ovNext    uintptr
	lastSpike uintptr
	// Set by settle: values lowered at [relocLo, relocHi) are read at +relocOff.
	relocLo, relocHi, relocOff uintptr

	// Return areas.
	exportRet [3]uint64
	importRet [3]uint64
	emptyList [1]uint64

	// Results lowered for the host, alive until cabi_post_*.
	outKeep []uint64
	errKeep []byte
)

func init() {
	setArena(initialArenaBytes)
	ready = true
}

// Implemented in mem_wasip1_wasm.s.
func memoryPages() int32
func memoryGrow(pages int32) int32

//go:nosplit
func memoryEnd() uintptr { return uintptr(memoryPages()) * wasmPage }

// ---- raw memory -------------------------------------------------------

//go:nosplit
func at(p uintptr) unsafe.Pointer { return unsafe.Add(unsafe.Pointer(nil), p) }

//go:nosplit
func ld8(p uintptr) uint8 { return *(*uint8)(at(p)) }

//go:nosplit
func ld32(p uintptr) uint32 { return *(*uint32)(at(p)) }

//go:nosplit
func ld64(p uintptr) uint64 { return *(*uint64)(at(p)) }

//go:nosplit
func st8(p uintptr, v uint8) { *(*uint8)(at(p)) = v }

//go:nosplit
func st32(p uintptr, v uint32) { *(*uint32)(at(p)) = v }

//go:nosplit
func st64(p uintptr, v uint64) { *(*uint64)(at(p)) = v }

//go:nosplit
func alignUp(p, align uintptr) uintptr {
	if align <= 1 {
		return p
	}
	return (p + align - 1) &^ (align - 1)
}

//go:nosplit
func copyMem(dst, src, n uintptr) {
	for i := uintptr(0); i < n; i++ {
		*(*byte)(at(dst + i)) = *(*byte)(at(src + i))
	}
}

// mem is a view of n bytes of linear memory at p.
func mem(p uintptr, n int) []byte {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(at(p)), n)
}

// lowered translates a pointer the host wrote (or was given by
// cabi_realloc) to where the value is now (see settle).
func lowered(p uint32) uintptr {
	a := uintptr(p)
	if a >= relocLo && a < relocHi {
		return a + relocOff
	}
	return a
}

func addrOfWords(b []uint64) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

func addrOfBytes(b []byte) uint32 { return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }

func addrOfString(s string) uint32 { return uint32(uintptr(unsafe.Pointer(unsafe.StringData(s)))) }

// liftBytes copies a lowered list<u8> into Go memory; never nil.
func liftBytes(p, n uint32) []byte {
	b := make([]byte, n)
	copy(b, mem(lowered(p), int(n)))
	return b
}

func liftString(p, n uint32) string {
	return string(mem(lowered(p), int(n)))
}

// ---- allocation for the host ------------------------------------------

//go:wasmexport cabi_realloc
//go:nosplit
func cabiRealloc(old, oldSize, align, newSize uint32) uint32 {
	if !ready {
		return staticAlloc(old, oldSize, align, newSize)
	}
	return arenaAlloc(old, oldSize, align, newSize)
}

//go:wasmexport cabi_realloc_adapter
//go:nosplit
func cabiReallocAdapter(old, oldSize, align, newSize uint32) uint32 {
	return staticAlloc(old, oldSize, align, newSize)
}

//go:nosplit
func staticAlloc(old, oldSize, align, newSize uint32) uint32 {
	base := uintptr(unsafe.Pointer(&staticArena[0]))
	p := alignUp(base+staticUsed, uintptr(align))
	end := p + uintptr(newSize)
	if end > base+staticArenaBytes {
		panic("plumber: static allocation arena exhausted")
	}
	staticUsed = end - base
	if old != 0 {
		copyMem(p, uintptr(old), uintptr(min(oldSize, newSize)))
	}
	return uint32(p)
}

//go:nosplit
func arenaAlloc(old, oldSize, align, newSize uint32) uint32 {
	p := alignUp(arenaNext, uintptr(align))
	end := p + uintptr(newSize)
	if end > arenaEnd || p < arenaNext {
		return overflowAlloc(old, oldSize, align, newSize)
	}
	return bump(&arenaNext, p, end, old, oldSize, newSize)
}

// overflowAlloc serves a request that does not fit in the arena from the
// overflow area past Go's heap, growing the memory as needed.
//
//go:nosplit
func overflowAlloc(old, oldSize, align, newSize uint32) uint32 {
	if !ovActive {
		goEnd := memoryEnd() - grown
		ovBase = goEnd + overflowMargin + 2*lastSpike
		ovNext = ovBase
		ovActive = true
	}
	p := alignUp(ovNext, uintptr(align))
	end := p + uintptr(newSize)
	if !growTo(end) {
		panic("plumber: out of memory for a value the host is passing in")
	}
	return bump(&ovNext, p, end, old, oldSize, newSize)
}

// bump hands out [p, end) from the area whose next free byte is *next,
// counting it in this batch's window and copying a reallocated value in.
//
//go:nosplit
func bump(next *uintptr, p, end uintptr, old, oldSize, newSize uint32) uint32 {
	windowBytes += end - *next
	*next = end
	if windowBytes > highWater {
		highWater = windowBytes
	}
	if old != 0 {
		copyMem(p, uintptr(old), uintptr(min(oldSize, newSize)))
	}
	return uint32(p)
}

// growTo grows the memory so that it extends to at least end.
//
//go:nosplit
func growTo(end uintptr) bool {
	have := memoryEnd()
	if end <= have {
		return true
	}
	pages := (end - have + wasmPage - 1) / wasmPage
	if pages > 1<<16 || memoryGrow(int32(pages)) < 0 {
		return false
	}
	grown += pages * wasmPage
	return true
}

// settle runs first thing once the host has lowered values (at the start of
// an export body, right after an import returns), before Go allocates: it
// makes sure values in the overflow area lie far enough above Go's heap
// that copying them into Go memory cannot reach them, moving them up
// otherwise (lowered() then translates the host's pointers).
func settle() {
	relocLo, relocHi, relocOff = 0, 0, 0
	if !ovActive {
		return
	}
	size := ovNext - ovBase
	if size > lastSpike {
		lastSpike = size
	}
	goEnd := memoryEnd() - grown
	safe := goEnd + 2*size + overflowMargin
	if ovBase >= safe {
		return
	}
	to := alignUp(max(safe, ovNext), 8)
	if !growTo(to + size) {
		panic("plumber: out of memory for the values the host passed in")
	}
	copy(mem(to, int(size)), mem(ovBase, int(size)))
	clear(mem(ovBase, int(size)))
	relocLo, relocHi, relocOff = ovBase, ovNext, to-ovBase
	ovBase, ovNext = to, to+size
}

func setArena(size uintptr) {
	arena = make([]uint64, size/8)
	arenaBase = addrOfWords(arena)
	arenaEnd = arenaBase + size
	arenaNext = arenaBase
	windowBytes = 0
}

// release forgets everything handed out to the host: call it once the
// values it lowered have been copied into Go memory. The overflow area is
// zeroed, as Go expects of memory past its break.
func release() {
	arenaNext = arenaBase
	windowBytes = 0
	relocLo, relocHi, relocOff = 0, 0, 0
	if ovActive {
		clear(mem(ovBase, int(ovNext-ovBase)))
		ovActive = false
	}
}

// arenaPrepare grows the arena, between calls, when the last windows came
// within half of its size.
func arenaPrepare() {
	need := highWater
	highWater = 0
	size := arenaEnd - arenaBase
	if need*2 <= size || size >= maxArenaBytes {
		return
	}
	for size < need*2 && size < maxArenaBytes {
		size *= 2
	}
	setArena(size)
}

// ---- exports -----------------------------------------------------------

//go:wasmexport init
func wasmInit(configPtr, configLen uint32) uint32 {
	settle()
	config := liftString(configPtr, configLen)
	release()
	ret := uintptr(unsafe.Pointer(&exportRet))
	if perr := callInit(config); perr != nil {
		lowerError(ret, perr)
	} else {
		st8(ret, 0)
	}
	finishCall()
	return uint32(ret)
}

//go:wasmexport process
func wasmProcess(eventsPtr, eventsLen, windowTag uint32, start, end uint64, keyTag, keyPtr, keyLen uint32) uint32 {
	settle()
	batch := Batch{Events: liftEvents(lowered(eventsPtr), int(eventsLen))}
	if windowTag != 0 {
		w := &WindowInfo{Start: start, End: end}
		if keyTag != 0 {
			w.Key = liftBytes(keyPtr, keyLen)
		}
		batch.Window = w
	}
	release()
	ret := uintptr(unsafe.Pointer(&exportRet))
	events, perr := callProcess(batch, hostState)
	if perr != nil {
		lowerError(ret, perr)
	} else {
		lowerEvents(ret, events)
	}
	finishCall()
	return uint32(ret)
}

//go:wasmexport cabi_post_init
func cabiPostInit(uint32) { releaseOutput() }

//go:wasmexport cabi_post_process
func cabiPostProcess(uint32) { releaseOutput() }

// finishCall ends an export call: grow the arena if the last windows
// came close to filling it.
func finishCall() {
	arenaPrepare()
}

// releaseOutput runs in cabi_post_*: the host has copied the results.
func releaseOutput() {
	errKeep = nil
	if cap(outKeep)*8 > keepOutBytes {
		outKeep = nil
	}
}

func liftEvents(p uintptr, n int) []Event {
	if n == 0 {
		return []Event{}
	}
	events := make([]Event, n)
	// One backing array for every key and value, one for the timestamps.
	total, stamps := 0, 0
	for i := 0; i < n; i++ {
		r := p + uintptr(i)*48
		if ld8(r) != 0 {
			total += int(ld32(r + 8))
		}
		total += int(ld32(r + 16))
		if ld8(r+24) != 0 {
			stamps++
		}
	}
	data := make([]byte, total)
	ts := make([]uint64, stamps)
	off := 0
	take := func(ptr, length uint32) []byte {
		l := int(length)
		b := data[off : off+l : off+l]
		copy(b, mem(lowered(ptr), l))
		off += l
		return b
	}
	for i := range events {
		r := p + uintptr(i)*48
		e := &events[i]
		if ld8(r) != 0 {
			e.Key = take(ld32(r+4), ld32(r+8))
		}
		e.Value = take(ld32(r+12), ld32(r+16))
		if ld8(r+24) != 0 {
			ts[0] = ld64(r + 32)
			e.Timestamp = &ts[0]
			ts = ts[1:]
		}
		if hn := ld32(r + 44); hn != 0 {
			hp := lowered(ld32(r + 40))
			headers := make([][2]string, hn)
			for j := range headers {
				t := hp + uintptr(j)*16
				headers[j] = [2]string{
					liftString(ld32(t), ld32(t+4)),
					liftString(ld32(t+8), ld32(t+12)),
				}
			}
			e.Headers = headers
		}
	}
	return events
}

// outBuffer returns 8-aligned Go memory of at least n bytes, alive until
// the next call.
func outBuffer(n int) uintptr {
	if n == 0 {
		return uintptr(unsafe.Pointer(&emptyList))
	}
	words := (n + 7) / 8
	if cap(outKeep) < words {
		outKeep = make([]uint64, words)
	}
	outKeep = outKeep[:words]
	return addrOfWords(outKeep)
}

func lowerEvents(ret uintptr, events []Event) {
	headers, data := 0, 0
	for i := range events {
		e := &events[i]
		data += len(e.Key) + len(e.Value)
		headers += len(e.Headers)
		for _, h := range e.Headers {
			data += len(validUTF8(h[0])) + len(validUTF8(h[1]))
		}
	}
	n := len(events)
	base := outBuffer(n*48 + headers*16 + data)
	rec, tup, dat := base, base+uintptr(n)*48, base+uintptr(n)*48+uintptr(headers)*16
	put := func(b []byte) (uint32, uint32) {
		p := dat
		copy(mem(p, len(b)), b)
		dat += uintptr(len(b))
		return uint32(p), uint32(len(b))
	}
	putString := func(s string) (uint32, uint32) {
		p := dat
		copy(mem(p, len(s)), s)
		dat += uintptr(len(s))
		return uint32(p), uint32(len(s))
	}
	for i := range events {
		e := &events[i]
		if e.Key != nil {
			p, l := put(e.Key)
			st8(rec, 1)
			st32(rec+4, p)
			st32(rec+8, l)
		} else {
			st8(rec, 0)
			st32(rec+4, 0)
			st32(rec+8, 0)
		}
		p, l := put(e.Value)
		st32(rec+12, p)
		st32(rec+16, l)
		if e.Timestamp != nil {
			st8(rec+24, 1)
			st64(rec+32, *e.Timestamp)
		} else {
			st8(rec+24, 0)
			st64(rec+32, 0)
		}
		st32(rec+40, uint32(tup))
		st32(rec+44, uint32(len(e.Headers)))
		for _, h := range e.Headers {
			p, l := putString(validUTF8(h[0]))
			st32(tup, p)
			st32(tup+4, l)
			p, l = putString(validUTF8(h[1]))
			st32(tup+8, p)
			st32(tup+12, l)
			tup += 16
		}
		rec += 48
	}
	st8(ret, 0)
	st32(ret+4, uint32(base))
	st32(ret+8, uint32(n))
}

// lowerError writes result::err(pipe-error) at ret (payload at ret+4).
func lowerError(ret uintptr, e *PipeError) {
	errKeep = []byte(validUTF8(e.Message))
	st8(ret, 1)
	st32(ret+4, addrOfBytes(errKeep))
	st32(ret+8, uint32(len(errKeep)))
	if e.Retryable {
		st8(ret+12, 1)
	} else {
		st8(ret+12, 0)
	}
	if e.EventIndex != nil {
		st8(ret+16, 1)
		st32(ret+20, *e.EventIndex)
	} else {
		st8(ret+16, 0)
		st32(ret+20, 0)
	}
}

// ---- imports -----------------------------------------------------------

//go:wasmimport plumber:pipe/state@0.1.1 get
func importGet(keyPtr, keyLen, ret uint32)

//go:wasmimport plumber:pipe/state@0.1.1 get-many
func importGetMany(keysPtr, keysLen, ret uint32)

//go:wasmimport plumber:pipe/state@0.1.1 set
func importSet(keyPtr, keyLen, valuePtr, valueLen, ret uint32)

//go:wasmimport plumber:pipe/state@0.1.1 delete
func importDelete(keyPtr, keyLen, ret uint32)

//go:wasmimport plumber:pipe/state@0.1.1 add
func importAdd(keyPtr, keyLen uint32, delta int64, ret uint32)

//go:wasmimport plumber:pipe/log@0.1.1 log
func importLog(level, msgPtr, msgLen, fieldsPtr, fieldsLen uint32)

func importRetAddr() uintptr { return uintptr(unsafe.Pointer(&importRet)) }

// liftStateError reads a state-error at p.
func liftStateError(p uintptr) error {
	return &StateError{Kind: StateErrorKind(ld8(p)), Message: liftString(ld32(p+4), ld32(p+8))}
}

func hostGet(key string) ([]byte, bool, error) {
	r := importRetAddr()
	importGet(addrOfString(key), uint32(len(key)), uint32(r))
	settle()
	var (
		value []byte
		found bool
		err   error
	)
	if ld8(r) == 0 {
		if ld8(r+4) != 0 {
			value, found = liftBytes(ld32(r+8), ld32(r+12)), true
		}
	} else {
		err = liftStateError(r + 4)
	}
	release()
	runtime.KeepAlive(key)
	return value, found, err
}

func hostGetMany(keys []string) ([][]byte, error) {
	if len(keys) == 0 {
		return [][]byte{}, nil
	}
	list := make([]uint32, 2*len(keys))
	for i, k := range keys {
		list[2*i] = addrOfString(k)
		list[2*i+1] = uint32(len(k))
	}
	r := importRetAddr()
	importGetMany(uint32(uintptr(unsafe.Pointer(&list[0]))), uint32(len(keys)), uint32(r))
	settle()
	var (
		values [][]byte
		err    error
	)
	if ld8(r) == 0 {
		p, n := lowered(ld32(r+4)), int(ld32(r+8))
		values = make([][]byte, n)
		for i := range values {
			o := p + uintptr(i)*12
			if ld8(o) != 0 {
				values[i] = liftBytes(ld32(o+4), ld32(o+8))
			}
		}
	} else {
		err = liftStateError(r + 4)
	}
	release()
	runtime.KeepAlive(keys)
	runtime.KeepAlive(list)
	return values, err
}

func hostSet(key string, value []byte) error {
	r := importRetAddr()
	importSet(addrOfString(key), uint32(len(key)), addrOfBytes(value), uint32(len(value)), uint32(r))
	settle()
	var err error
	if ld8(r) != 0 {
		err = liftStateError(r + 4)
	}
	release()
	runtime.KeepAlive(key)
	runtime.KeepAlive(value)
	return err
}

func hostDelete(key string) error {
	r := importRetAddr()
	importDelete(addrOfString(key), uint32(len(key)), uint32(r))
	settle()
	var err error
	if ld8(r) != 0 {
		err = liftStateError(r + 4)
	}
	release()
	runtime.KeepAlive(key)
	return err
}

func hostAdd(key string, delta int64) (int64, error) {
	r := importRetAddr()
	importAdd(addrOfString(key), uint32(len(key)), delta, uint32(r))
	settle()
	var (
		n   int64
		err error
	)
	if ld8(r) == 0 {
		n = int64(ld64(r + 8))
	} else {
		err = liftStateError(r + 8)
	}
	release()
	runtime.KeepAlive(key)
	return n, err
}

func hostLog(level Level, message string, fields [][2]string) {
	if level > LevelError {
		level = LevelError
	}
	message = validUTF8(message)
	strs := make([]string, 0, 2*len(fields))
	list := make([]uint32, 4*len(fields)+1)
	for i, f := range fields {
		k, v := validUTF8(f[0]), validUTF8(f[1])
		strs = append(strs, k, v)
		list[4*i] = addrOfString(k)
		list[4*i+1] = uint32(len(k))
		list[4*i+2] = addrOfString(v)
		list[4*i+3] = uint32(len(v))
	}
	importLog(uint32(level), addrOfString(message), uint32(len(message)),
		uint32(uintptr(unsafe.Pointer(&list[0]))), uint32(len(fields)))
	runtime.KeepAlive(message)
	runtime.KeepAlive(strs)
	runtime.KeepAlive(list)
}
