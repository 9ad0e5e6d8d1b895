//go:build !unix

package bench

import "time"

// cpuClock falls back to elapsed time where getrusage is missing.
type cpuClock struct{ start time.Time }

func startCPU() cpuClock { return cpuClock{start: time.Now()} }

func (c cpuClock) seconds() float64 { return time.Since(c.start).Seconds() }
