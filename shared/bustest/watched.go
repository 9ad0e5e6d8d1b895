package bustest

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"
)

// Watched is a client connection that records the asynchronous errors
// the server sends it, such as the permission violations of a refused
// publish or subscription, so a test can wait for a refusal.
type Watched struct {
	*nats.Conn

	mu   sync.Mutex
	errs []error
}

// ConnectWatched opens a Watched connection that is closed when the test
// ends. opts must not set nats.ErrorHandler: the connection's own records
// the errors.
func ConnectWatched(t testing.TB, url string, opts ...nats.Option) *Watched {
	t.Helper()
	w := &Watched{}
	opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		w.mu.Lock()
		w.errs = append(w.errs, err)
		w.mu.Unlock()
	}))
	w.Conn = Connect(t, url, opts...)
	return w
}

// PermissionViolation reports whether the server refused something on
// this connection for lack of permission, naming subject.
func (w *Watched) PermissionViolation(subject string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, err := range w.errs {
		if (errors.Is(err, nats.ErrPermissionViolation) || strings.Contains(err.Error(), "Permissions Violation")) &&
			strings.Contains(err.Error(), subject) {
			return true
		}
	}
	return false
}
