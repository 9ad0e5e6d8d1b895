//go:build unix && !linux

package bench

import "syscall"

// cpuClock measures the process's user and system CPU time, which counts
// the work of both simulated peers and the garbage collector.
type cpuClock struct{ start float64 }

func startCPU() cpuClock { return cpuClock{start: processCPU()} }

func (c cpuClock) seconds() float64 { return processCPU() - c.start }

func processCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
