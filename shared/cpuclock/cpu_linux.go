// Package cpuclock measures the CPU time the process spends, for benches
// whose peers all run in one process: on a machine shared with other work,
// CPU time is steadier than elapsed time.
package cpuclock

import (
	"syscall"
	"unsafe"
)

// Clock measures the process's CPU time with nanosecond resolution
// (CLOCK_PROCESS_CPUTIME_ID); it counts the work of every goroutine and
// the garbage collector. getrusage only moves once per scheduler tick.
type Clock struct{ start float64 }

// Start starts a Clock.
func Start() Clock { return Clock{start: processCPU()} }

// Seconds is the CPU time spent since Start.
func (c Clock) Seconds() float64 { return processCPU() - c.start }

const clockProcessCPUTime = 2 // CLOCK_PROCESS_CPUTIME_ID

func processCPU() float64 {
	var ts syscall.Timespec
	if _, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockProcessCPUTime, uintptr(unsafe.Pointer(&ts)), 0); errno != 0 {
		return 0
	}
	return float64(ts.Nano()) / 1e9
}
