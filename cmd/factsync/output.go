package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/factsync/factsync/events"
)

// Exit codes. Scripts can tell a usage mistake from a refusal from an
// outage without parsing text.
const (
	exitOK          = 0
	exitFailure     = 1 // the request was refused or failed; see the reason code
	exitUsage       = 2 // the command line was wrong
	exitUnavailable = 3 // the stack could not be reached
)

func exitCode(err error) int {
	var u *usageError
	switch {
	case errors.As(err, &u):
		return exitUsage
	case events.IsReason(err, events.ReasonUnavailable):
		return exitUnavailable
	default:
		return exitFailure
	}
}

// printer writes results as text or JSON, per the -o flag.
type printer struct {
	json   bool
	stdout io.Writer
	stderr io.Writer
}

func (g *globals) out(stdout, stderr io.Writer) *printer {
	return &printer{json: g.output == "json", stdout: stdout, stderr: stderr}
}

// result prints v as JSON with -o json, or text otherwise.
func (p *printer) result(v any, text func(w io.Writer)) {
	if p.json {
		enc := json.NewEncoder(p.stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
		return
	}
	text(p.stdout)
}

// fail reports err with its reason code: as an events.ErrorBody with -o
// json (on stdout, so a pipeline sees it), as one line on stderr otherwise.
func (p *printer) fail(err error) {
	reason := events.ReasonOf(err)
	var u *usageError
	if errors.As(err, &u) {
		reason = "usage"
	}
	if p.json {
		b, _ := json.Marshal(events.ErrorBody{Error: events.ErrorDetail{Reason: reason, Detail: detailOf(err)}})
		fmt.Fprintln(p.stdout, string(b))
		return
	}
	fmt.Fprintf(p.stderr, "factsync: %s (reason: %s)\n", detailOf(err), reason)
}

func detailOf(err error) string {
	var e *events.Error
	if errors.As(err, &e) {
		d := e.Detail
		if e.Err != nil {
			d += ": " + e.Err.Error()
		}
		return d
	}
	return err.Error()
}
