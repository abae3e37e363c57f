// Linear memory size and growth, for the canonical-ABI glue (abi_wasip1.go):
// the overflow area of cabi_realloc lives past the Go heap, in memory grown
// here, so that cabi_realloc never calls Go's allocator.

#include "textflag.h"

// func memoryPages() int32
TEXT ·memoryPages(SB), NOSPLIT, $0-4
	Get SP
	CurrentMemory
	I32Store ret+0(FP)
	RET

// func memoryGrow(pages int32) int32
TEXT ·memoryGrow(SB), NOSPLIT, $0-12
	Get SP
	I32Load pages+0(FP)
	GrowMemory
	I32Store ret+8(FP)
	RET
