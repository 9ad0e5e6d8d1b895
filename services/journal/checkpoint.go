package journal

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/fold"
)

// A checkpoint is the replica's state at a JOURNAL sequence, in one file:
//
//	magic "fsjournal1\n"
//	u64 seq, [32] SHA-256 of the message at seq, i64 stream created
//	(unix nanos), uvarint #authorities,
//	per authority (ascending): uvarint len + id, uvarint len + fold encoding
//	SHA-256 of everything before it
//
// It is written to a temporary file, fsynced and renamed over the old one,
// and the directory is fsynced, so a crash leaves the old checkpoint or the
// new one, never a torn one; the trailing hash catches any other
// corruption. seq is the last sequence folded into the state, which came
// from the stream, so the checkpoint is never ahead of the stream it was
// taken from. The stream's creation time and the hash of the message at seq
// identify that stream: a JOURNAL recreated from scratch, or one that lost
// its tail in a crash of a lazily syncing server and then took other
// messages, does not inherit the checkpoint.
const (
	checkpointMagic = "fsjournal1\n"
	checkpointFile  = "checkpoint"
)

type checkpoint struct {
	tip           tip
	streamCreated int64
	folds         map[events.AuthorityID]*fold.State
}

// encode renders the replica as a checkpoint. Lock: takes mu for reading,
// for as long as the folds take to encode.
func (r *replica) encode(streamCreated int64) (seq uint64, data []byte, err error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	b := []byte(checkpointMagic)
	b = binary.BigEndian.AppendUint64(b, r.tip.seq)
	b = append(b, r.tip.hash[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(streamCreated))
	b = binary.AppendUvarint(b, uint64(len(r.folds)))
	for _, auth := range slices.Sorted(maps.Keys(r.folds)) {
		st, err := r.folds[auth].MarshalBinary()
		if err != nil {
			return 0, nil, err
		}
		b = binary.AppendUvarint(b, uint64(len(auth)))
		b = append(b, auth...)
		b = binary.AppendUvarint(b, uint64(len(st)))
		b = append(b, st...)
	}
	sum := sha256.Sum256(b)
	return r.tip.seq, append(b, sum[:]...), nil
}

// errNoCheckpoint means there is no checkpoint to resume from.
var errNoCheckpoint = errors.New("no checkpoint")

// readCheckpoint loads the checkpoint in dir. A missing file is
// errNoCheckpoint; a damaged one is a ReasonMalformed error.
func readCheckpoint(dir string) (*checkpoint, error) {
	data, err := os.ReadFile(filepath.Join(dir, checkpointFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNoCheckpoint
	}
	if err != nil {
		return nil, err
	}
	return decodeCheckpoint(data)
}

func decodeCheckpoint(data []byte) (*checkpoint, error) {
	damaged := func(what string) error {
		return events.Errorf(events.ReasonMalformed, "journal checkpoint is damaged: %s", what)
	}
	const header = 8 + sha256.Size + 8
	if len(data) < len(checkpointMagic)+header+sha256.Size || !bytes.HasPrefix(data, []byte(checkpointMagic)) {
		return nil, damaged("too short or not a checkpoint")
	}
	body, sum := data[:len(data)-sha256.Size], data[len(data)-sha256.Size:]
	if want := sha256.Sum256(body); !bytes.Equal(sum, want[:]) {
		return nil, damaged("checksum mismatch")
	}
	b := body[len(checkpointMagic):]
	c := &checkpoint{
		tip:           tip{seq: binary.BigEndian.Uint64(b)},
		streamCreated: int64(binary.BigEndian.Uint64(b[8+sha256.Size:])),
		folds:         map[events.AuthorityID]*fold.State{},
	}
	copy(c.tip.hash[:], b[8:])
	b = b[header:]
	// The encoding is canonical, as encode writes it: shortest varints,
	// authorities ascending and each once. A checkpoint that names an
	// authority twice would otherwise lose one of its folds unnoticed.
	uvarint := func() (uint64, bool) {
		n, k := binary.Uvarint(b)
		if k <= 0 || k != len(binary.AppendUvarint(nil, n)) {
			return 0, false
		}
		b = b[k:]
		return n, true
	}
	next := func() ([]byte, bool) {
		n, ok := uvarint()
		if !ok || n > uint64(len(b)) {
			return nil, false
		}
		out := b[:n]
		b = b[n:]
		return out, true
	}
	count, ok := uvarint()
	if !ok {
		return nil, damaged("bad authority count")
	}
	var prev events.AuthorityID
	for range count {
		auth, ok1 := next()
		st, ok2 := next()
		if !ok1 || !ok2 {
			return nil, damaged("truncated")
		}
		id := events.AuthorityID(auth)
		if err := id.Validate(); err != nil {
			return nil, damaged(err.Error())
		}
		if id <= prev {
			return nil, damaged(fmt.Sprintf("authority %s out of order or repeated", id))
		}
		prev = id
		state := fold.New()
		if err := state.UnmarshalBinary(st); err != nil {
			return nil, damaged(fmt.Sprintf("authority %s: %v", id, err))
		}
		c.folds[id] = state
	}
	if len(b) != 0 {
		return nil, damaged("trailing bytes")
	}
	return c, nil
}
