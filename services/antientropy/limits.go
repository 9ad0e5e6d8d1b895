package antientropy

import (
	"sync"
	"time"

	"github.com/factsync/factsync/shared/clock"
)

// bucket is a token bucket on the injected clock: it holds up to burst
// tokens and refills rate tokens a second.
type bucket struct {
	rate, burst float64
	tokens      float64
	last        time.Time
}

// take spends one token if there is one.
func (b *bucket) take(now time.Time) bool {
	if b.last.IsZero() {
		b.tokens = b.burst
	} else if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(b.burst, b.tokens+dt*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// limiter is a token bucket per key (a peer, or a requesting device) and
// one for the whole site: a request must get a token from both.
type limiter struct {
	clk  clock.Clock
	mu   sync.Mutex
	site bucket
	per  map[string]*bucket
	rate float64
	max  float64
}

func newLimiter(clk clock.Clock, perRate, perBurst, siteRate, siteBurst float64) *limiter {
	return &limiter{clk: clk, site: bucket{rate: siteRate, burst: siteBurst}, per: map[string]*bucket{}, rate: perRate, max: perBurst}
}

// allow reports whether key may make one more request now.
func (l *limiter) allow(key string) bool {
	now := l.clk.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.per[key]
	if b == nil {
		if len(l.per) > 4096 { // forget idle keys rather than grow without bound
			clear(l.per)
		}
		b = &bucket{rate: l.rate, burst: l.max}
		l.per[key] = b
	}
	// Check the key's bucket first, so one noisy key spends only its own
	// tokens once it is over its limit.
	return b.take(now) && l.site.take(now)
}
