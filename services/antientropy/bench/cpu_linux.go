package bench

import (
	"syscall"
	"unsafe"
)

// cpuClock measures the process's CPU time with nanosecond resolution
// (CLOCK_PROCESS_CPUTIME_ID); it counts the work of both simulated peers
// and the garbage collector. getrusage only moves once per scheduler tick.
type cpuClock struct{ start float64 }

func startCPU() cpuClock { return cpuClock{start: processCPU()} }

func (c cpuClock) seconds() float64 { return processCPU() - c.start }

const clockProcessCPUTime = 2 // CLOCK_PROCESS_CPUTIME_ID

func processCPU() float64 {
	var ts syscall.Timespec
	if _, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockProcessCPUTime, uintptr(unsafe.Pointer(&ts)), 0); errno != 0 {
		return 0
	}
	return float64(ts.Nano()) / 1e9
}
