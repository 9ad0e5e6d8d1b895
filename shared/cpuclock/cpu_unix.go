//go:build unix && !linux

package cpuclock

import "syscall"

// Clock measures the process's user and system CPU time, which counts the
// work of every goroutine and the garbage collector.
type Clock struct{ start float64 }

// Start starts a Clock.
func Start() Clock { return Clock{start: processCPU()} }

// Seconds is the CPU time spent since Start.
func (c Clock) Seconds() float64 { return processCPU() - c.start }

func processCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
