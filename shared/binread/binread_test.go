package binread_test

import (
	"encoding/binary"
	"testing"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/binread"
)

func TestReaderReadsAndRefusesCorruptLengths(t *testing.T) {
	b := binary.AppendUvarint(nil, 2)
	b = binary.AppendUvarint(b, 3)
	b = append(b, "abc"...)
	b = binary.AppendUvarint(b, 1)
	b = append(b, 'x')
	r := binread.New(b, "test encoding")
	if n := r.Count(); n != 2 {
		t.Fatalf("count %d, want 2", n)
	}
	if got := r.Text(); got != "abc" {
		t.Fatalf("text %q", got)
	}
	if got := string(r.Bytes()); got != "x" {
		t.Fatalf("bytes %q", got)
	}
	if err := r.Finish(); err != nil {
		t.Fatal(err)
	}

	// A length beyond the data fails, and every later read is empty.
	bad := binread.New(binary.AppendUvarint(nil, 1<<40), "test encoding")
	if got := bad.Bytes(); got != nil || !events.IsReason(bad.Err(), events.ReasonMalformed) {
		t.Fatalf("a length past the end read %q, err %v", got, bad.Err())
	}
	if bad.Count() != 0 || bad.Next(0) != nil {
		t.Fatal("reads after an error return values")
	}
	trailing := binread.New([]byte{0, 7}, "test encoding")
	trailing.Count()
	if err := trailing.Finish(); !events.IsReason(err, events.ReasonMalformed) {
		t.Fatalf("trailing bytes: %v", err)
	}
}
