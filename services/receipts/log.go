package receipts

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/factsync/factsync/shared/atomicfile"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/factsync/factsync/events"
	"golang.org/x/mod/sumdb/tlog"
)

// The log on disk, in a directory private to the service:
//
//	leaves      one leafRecordSize record per leaf: FactID || AuthorityID
//	hashes      tlog's stored hashes, tlog.HashSize bytes each, in tlog.StoredHashIndex order
//	tree        JSON {size, root, journal_seq}: the committed tree and the
//	            JOURNAL sequence it reflects, replaced atomically
//	checkpoint  the last checkpoint this peer signed, replaced atomically
//
// An append writes leaves and hashes past the end and makes them visible in
// memory, without an fsync. Sync makes the log durable: it fsyncs leaves
// and hashes and only then replaces tree. The tree file is the commit
// point: whatever lies past its size in leaves or hashes was appended but
// not yet synced (or its sync never finished), and Open cuts it off. The
// service then reads JOURNAL again from the position in tree, so those
// facts come again and are appended once. Only what a checkpoint vouches
// for must survive a crash, so SignCheckpoint and Adopt sync first: one
// commit per checkpoint, not one per append (docs/receipts.md, "Checkpoint
// cadence").
//
// The service appends the facts of JOURNAL in stream order, each FactID
// at its first occurrence (a fact the guard wrote twice is one leaf) and
// skipping what is not an accepted fact. The log is therefore a function
// of JOURNAL alone: every replica that follows JOURNAL builds the same
// leaves in the same order, which is what lets a standby take over the
// signing without forking the log (docs/receipts.md, "Replicas").
const (
	leavesFile     = "leaves"
	hashesFile     = "hashes"
	treeFile       = "tree"
	checkpointFile = "checkpoint"

	leafRecordSize = len(events.FactID{}) + events.IDLen
)

// Leaf is one entry of the log: an accepted fact and the authority whose
// journal holds it. Only the FactID is hashed into the tree; the authority
// lets the service answer a receipt request only for the authority the
// request was authorised for.
type Leaf struct {
	Fact      events.FactID
	Authority events.AuthorityID
}

// LeafHash is the RFC 6962 leaf hash of a fact: SHA-256(0x00 || FactID).
func LeafHash(id events.FactID) tlog.Hash { return tlog.RecordHash(id[:]) }

// Log is the peer's append-only Merkle log of accepted FactIDs. It is safe
// for concurrent use: one append at a time, any number of readers.
type Log struct {
	dir    string
	leaves *os.File
	hashes *os.File

	// appendMu serialises appends, which write past the end of the files
	// without holding mu.
	appendMu sync.Mutex
	// commitMu serialises syncing the log and signing or adopting
	// checkpoints, which replace the tree and checkpoint files. It does not
	// hold appends up: a sync commits the tree it read once under mu, whose
	// leaves and stored hashes never change, so the log may grow meanwhile.
	commitMu sync.Mutex
	durable  committedTree // the tree in the tree file; guarded by commitMu

	mu       sync.RWMutex // guards the fields below
	size     int64
	root     tlog.Hash
	position uint64 // the JOURNAL sequence the tree reflects
	index    map[events.FactID]int64
	last     *SignedCheckpoint // the last checkpoint signed, nil before the first

	// interrupted is what OpenLog cut off the end of the leaves and
	// hashes files: what an append that stopped before its commit wrote.
	interrupted Interrupted

	// beforeCommit, set only by tests, runs once a sync has made the
	// leaves and hashes durable and before the tree file is replaced; an
	// error stops the sync there, as a crash would.
	beforeCommit func() error
}

// committedTree is the content of the tree file.
type committedTree struct {
	Size     int64     `json:"size"`
	Root     tlog.Hash `json:"root"`
	Position uint64    `json:"journal_seq,omitempty"`
}

// OpenLog opens (or creates) the log in dir and resumes it exactly at its
// last committed size. It refuses to open a log whose files disagree with
// the committed root, or that is not consistent with the checkpoint signed
// before: signing on from there would fork the log.
func OpenLog(dir string) (*Log, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("receipts: create log directory: %w", err)
	}
	l := &Log{dir: dir, index: make(map[events.FactID]int64)}
	var err error
	if l.leaves, err = os.OpenFile(filepath.Join(dir, leavesFile), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		return nil, fmt.Errorf("receipts: open leaves: %w", err)
	}
	if l.hashes, err = os.OpenFile(filepath.Join(dir, hashesFile), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		l.leaves.Close()
		return nil, fmt.Errorf("receipts: open hashes: %w", err)
	}
	if err := l.resume(); err != nil {
		// Not Close: its sync would commit a tree the failed resume left
		// half loaded.
		l.leaves.Close()
		l.hashes.Close()
		return nil, err
	}
	return l, nil
}

// resume loads the committed tree, cuts off any unfinished append, rebuilds
// the FactID index and checks the files against the committed root and the
// last signed checkpoint.
func (l *Log) resume() error {
	var tree committedTree
	switch raw, err := os.ReadFile(filepath.Join(l.dir, treeFile)); {
	case errors.Is(err, fs.ErrNotExist):
		tree.Root, _ = tlog.TreeHash(0, nil)
	case err != nil:
		return fmt.Errorf("receipts: read tree: %w", err)
	default:
		if err := json.Unmarshal(raw, &tree); err != nil || tree.Size < 0 {
			return fmt.Errorf("receipts: tree file %s is corrupt", filepath.Join(l.dir, treeFile))
		}
	}
	var err error
	if l.interrupted.LeafBytes, err = cutTo(l.leaves, tree.Size*int64(leafRecordSize)); err != nil {
		return fmt.Errorf("receipts: leaves: %w", err)
	}
	if l.interrupted.HashBytes, err = cutTo(l.hashes, tlog.StoredHashCount(tree.Size)*tlog.HashSize); err != nil {
		return fmt.Errorf("receipts: hashes: %w", err)
	}
	l.size, l.position, l.durable = tree.Size, tree.Position, tree
	root, err := tlog.TreeHash(l.size, l.reader(l.size, nil))
	if err != nil {
		return fmt.Errorf("receipts: recompute root: %w", err)
	}
	if root != tree.Root {
		return fmt.Errorf("receipts: stored hashes give root %s at size %d, but the tree file says %s: the log is corrupt", root, l.size, tree.Root)
	}
	l.root = root
	if err := l.rebuildIndex(); err != nil {
		return err
	}
	return l.loadCheckpoint()
}

// cutTo truncates f to n bytes, dropping an unfinished append, and
// returns how many bytes it dropped. A file shorter than n lost committed
// data, which no crash can cause.
func cutTo(f *os.File, n int64) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if st.Size() < n {
		return 0, fmt.Errorf("%s has %d bytes but the committed tree needs %d: the log is corrupt", f.Name(), st.Size(), n)
	}
	if st.Size() == n {
		return 0, nil
	}
	if err := f.Truncate(n); err != nil {
		return 0, err
	}
	return st.Size() - n, f.Sync()
}

// Interrupted is what OpenLog found past the committed end of the log's
// files: the bytes of an append that a crash stopped before its commit.
// They were dropped, and the JOURNAL messages they came from are appended
// again from the committed position.
type Interrupted struct {
	LeafBytes, HashBytes int64
}

// Interrupted reports what OpenLog dropped of an append that had not
// committed; zero when the last append finished or none was under way.
func (l *Log) Interrupted() Interrupted { return l.interrupted }

// rebuildIndex reads every committed leaf into the FactID index. A FactID
// twice in the log means the dedup was broken; refuse rather than serve
// ambiguous receipts.
func (l *Log) rebuildIndex() error {
	r := io.NewSectionReader(l.leaves, 0, l.size*int64(leafRecordSize))
	buf := make([]byte, 64<<10/leafRecordSize*leafRecordSize)
	var i int64
	for i < l.size {
		n, err := io.ReadFull(r, buf[:min(int64(len(buf)), (l.size-i)*int64(leafRecordSize))])
		if err != nil {
			return fmt.Errorf("receipts: read leaves: %w", err)
		}
		for off := 0; off < n; off += leafRecordSize {
			leaf := decodeLeaf(buf[off : off+leafRecordSize])
			if prev, dup := l.index[leaf.Fact]; dup {
				return fmt.Errorf("receipts: fact %s is at leaves %d and %d: the log is corrupt", leaf.Fact, prev, i)
			}
			l.index[leaf.Fact] = i
			i++
		}
	}
	return nil
}

func encodeLeaf(dst []byte, leaf Leaf) {
	copy(dst, leaf.Fact[:])
	copy(dst[len(leaf.Fact):], leaf.Authority)
}

func decodeLeaf(rec []byte) Leaf {
	var leaf Leaf
	copy(leaf.Fact[:], rec)
	leaf.Authority = events.AuthorityID(rec[len(leaf.Fact):leafRecordSize])
	return leaf
}

// Close syncs the log, so that a clean stop resumes where it stopped,
// and releases the files.
func (l *Log) Close() error {
	return errors.Join(l.Sync(), l.leaves.Close(), l.hashes.Close())
}

// Size returns the number of leaves appended and the root over them.
func (l *Log) Size() (int64, tlog.Hash) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.size, l.root
}

// Position is the JOURNAL sequence the log reflects: every JOURNAL
// message up to it was appended or skipped. 0 for a log that has not
// followed JOURNAL (or only through Append). After OpenLog it is the
// position of the last sync.
func (l *Log) Position() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.position
}

// Lookup returns the leaf index of an appended fact.
func (l *Log) Lookup(id events.FactID) (int64, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	i, ok := l.index[id]
	return i, ok
}

// Leaf returns the appended leaf at index i.
func (l *Log) Leaf(i int64) (Leaf, error) {
	if size, _ := l.Size(); i < 0 || i >= size {
		return Leaf{}, events.Errorf(events.ReasonNotFound, "leaf %d is not in the log of %d leaves", i, size)
	}
	rec := make([]byte, leafRecordSize)
	if _, err := l.leaves.ReadAt(rec, i*int64(leafRecordSize)); err != nil {
		return Leaf{}, events.Wrap(events.ReasonInternal, err, "read leaf")
	}
	return decodeLeaf(rec), nil
}

// Append adds the leaves not yet in the log, in order. They are visible
// when it returns and durable after the next Sync (or signed checkpoint).
// A fact already in the log, or twice in leaves, is not appended again.
// It returns how many leaves were new.
func (l *Log) Append(leaves []Leaf) (int, error) {
	return l.AppendThrough(leaves, l.Position())
}

// AppendThrough appends leaves as Append does and records that the log
// now reflects JOURNAL through sequence position, which the next Sync
// commits with them. It moves the position even when no leaf is new.
func (l *Log) AppendThrough(leaves []Leaf, position uint64) (int, error) {
	l.appendMu.Lock()
	defer l.appendMu.Unlock()
	size, root := l.Size()
	if position < l.Position() {
		return 0, fmt.Errorf("receipts: append through JOURNAL sequence %d, but the log reflects %d already", position, l.Position())
	}

	fresh := make([]Leaf, 0, len(leaves))
	seen := make(map[events.FactID]bool, len(leaves))
	for _, leaf := range leaves {
		if _, old := l.Lookup(leaf.Fact); old || seen[leaf.Fact] {
			continue
		}
		seen[leaf.Fact] = true
		fresh = append(fresh, leaf)
	}
	if len(fresh) == 0 {
		if position == l.Position() {
			return 0, nil
		}
		l.extend(size, root, position, nil)
		return 0, nil
	}

	records := make([]byte, len(fresh)*leafRecordSize)
	var pending []tlog.Hash // stored hashes from StoredHashCount(size) on
	for i, leaf := range fresh {
		encodeLeaf(records[i*leafRecordSize:], leaf)
		hashes, err := tlog.StoredHashesForRecordHash(size+int64(i), LeafHash(leaf.Fact), l.reader(size, pending))
		if err != nil {
			return 0, fmt.Errorf("receipts: compute stored hashes: %w", err)
		}
		pending = append(pending, hashes...)
	}
	newSize := size + int64(len(fresh))
	root, err := tlog.TreeHash(newSize, l.reader(size, pending))
	if err != nil {
		return 0, fmt.Errorf("receipts: compute root: %w", err)
	}

	if _, err := l.leaves.WriteAt(records, size*int64(leafRecordSize)); err != nil {
		return 0, fmt.Errorf("receipts: write leaves: %w", err)
	}
	if _, err := l.hashes.WriteAt(encodeHashes(pending), tlog.StoredHashCount(size)*tlog.HashSize); err != nil {
		return 0, fmt.Errorf("receipts: write hashes: %w", err)
	}
	l.extend(newSize, root, position, fresh)
	return len(fresh), nil
}

// extend makes the tree of newSize leaves, which adds fresh to the ones
// before, the log's tree. Its leaves and hashes are written.
func (l *Log) extend(newSize int64, root tlog.Hash, position uint64, fresh []Leaf) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, leaf := range fresh {
		l.index[leaf.Fact] = l.size + int64(i)
	}
	l.size, l.root, l.position = newSize, root, position
}

// Sync makes everything appended so far durable: it fsyncs the leaves and
// hashes, then replaces the tree file, the commit point a restart resumes
// from.
func (l *Log) Sync() error {
	l.commitMu.Lock()
	defer l.commitMu.Unlock()
	_, err := l.syncLocked()
	return err
}

// syncLocked is Sync with commitMu held; it returns the tree it committed.
func (l *Log) syncLocked() (committedTree, error) {
	l.mu.RLock()
	tree := committedTree{Size: l.size, Root: l.root, Position: l.position}
	l.mu.RUnlock()
	if tree == l.durable {
		return tree, nil
	}
	// The two fsyncs are independent: wait for one while the other runs.
	leaves := make(chan error, 1)
	go func() { leaves <- l.leaves.Sync() }()
	err := l.hashes.Sync()
	if err := errors.Join(err, <-leaves); err != nil {
		return committedTree{}, fmt.Errorf("receipts: sync leaves and hashes: %w", err)
	}
	if l.beforeCommit != nil {
		if err := l.beforeCommit(); err != nil {
			return committedTree{}, err
		}
	}
	if err := atomicfile.Write(filepath.Join(l.dir, treeFile), mustJSON(tree)); err != nil {
		return committedTree{}, fmt.Errorf("receipts: commit tree: %w", err)
	}
	l.durable = tree
	return tree, nil
}

func encodeHashes(hashes []tlog.Hash) []byte {
	b := make([]byte, 0, len(hashes)*tlog.HashSize)
	for _, h := range hashes {
		b = append(b, h[:]...)
	}
	return b
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only called with types that always marshal
	}
	return b
}

// reader reads the stored hashes of the tree of size leaves from the
// hashes file and, past them, from pending: the hashes of an append not yet
// written. Stored hashes never change once written, so a reader needs no
// lock as long as size has been appended.
func (l *Log) reader(size int64, pending []tlog.Hash) tlog.HashReader {
	committed := tlog.StoredHashCount(size)
	return tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(indexes))
		var buf [tlog.HashSize]byte
		for i, x := range indexes {
			switch {
			case x >= committed && x-committed < int64(len(pending)):
				out[i] = pending[x-committed]
			case x >= 0 && x < committed:
				if _, err := l.hashes.ReadAt(buf[:], x*tlog.HashSize); err != nil {
					return nil, fmt.Errorf("read stored hash %d: %w", x, err)
				}
				out[i] = buf
			default:
				return nil, fmt.Errorf("stored hash %d is beyond the log", x)
			}
		}
		return out, nil
	})
}

// ProveInclusion returns the RFC 6962 inclusion proof of leaf i in the tree
// of the given size, which must not exceed the committed size.
func (l *Log) ProveInclusion(i, size int64) (tlog.RecordProof, error) {
	if committed, _ := l.Size(); size > committed || i < 0 || i >= size {
		return nil, events.Errorf(events.ReasonNotFound, "leaf %d is not in a tree of size %d (the log has %d leaves)", i, size, committed)
	}
	return tlog.ProveRecord(size, i, l.reader(size, nil))
}

// ProveConsistency returns the RFC 6962 consistency proof that the tree of
// size oldSize is a prefix of the tree of size newSize.
func (l *Log) ProveConsistency(oldSize, newSize int64) (tlog.TreeProof, error) {
	if committed, _ := l.Size(); oldSize < 0 || oldSize > newSize || newSize > committed {
		return nil, events.Errorf(events.ReasonNotFound, "no consistency proof from size %d to size %d: the log has %d leaves", oldSize, newSize, committed)
	}
	if oldSize == 0 {
		return tlog.TreeProof{}, nil // the empty tree is a prefix of every tree
	}
	return tlog.ProveTree(newSize, oldSize, l.reader(newSize, nil))
}

// TreeHashAt returns the root of the tree of the first size leaves.
func (l *Log) TreeHashAt(size int64) (tlog.Hash, error) {
	if committed, _ := l.Size(); size < 0 || size > committed {
		return tlog.Hash{}, events.Errorf(events.ReasonNotFound, "tree size %d is beyond the log of %d leaves", size, committed)
	}
	return tlog.TreeHash(size, l.reader(size, nil))
}
