//go:build !unix

package cpuclock

import "time"

// Clock falls back to elapsed time where getrusage is missing.
type Clock struct{ start time.Time }

// Start starts a Clock.
func Start() Clock { return Clock{start: time.Now()} }

// Seconds is the time elapsed since Start.
func (c Clock) Seconds() float64 { return time.Since(c.start).Seconds() }
