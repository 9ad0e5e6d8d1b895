package sdk

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"github.com/factsync/factsync/shared/atomicfile"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
)

// Write is one change a device makes to a document: a put of some fields,
// or a delete.
type Write struct {
	Collection string
	Document   string
	// Fields is the JSON object of fields a put sets; nil for a delete.
	Fields json.RawMessage
	// Delete hides the document; Reason says why.
	Delete bool
	Reason string
}

// Signer turns writes into facts signed by one device. Its HLC never goes
// backwards, across restarts too when the Config has a StateDir: the last
// reading is persisted before any fact carrying it leaves Sign. It is safe
// for concurrent use.
type Signer struct {
	authorityKey ed25519.PublicKey
	device       ed25519.PrivateKey
	token        []byte
	tokenHash    []byte
	hlcPath      string // "" keeps the HLC in memory only

	// persistMu orders HLC persistence so a slower writer never
	// overwrites a newer reading with an older one.
	persistMu sync.Mutex
	persisted events.HLC
	clock     *events.Clock
}

// hlcFile is the file under Config.StateDir that holds the last HLC.
const hlcFile = "device.hlc"

// NewSigner validates cfg and restores the device's HLC from StateDir.
func NewSigner(cfg Config) (*Signer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Signer{
		authorityKey: cfg.AuthorityKey,
		device:       cfg.DeviceKey,
		token:        cfg.Token,
	}
	s.tokenHash, _ = hex.DecodeString(events.TokenHash(cfg.Token))
	if cfg.StateDir != "" {
		s.hlcPath = filepath.Join(cfg.StateDir, hlcFile)
		last, err := loadHLC(s.hlcPath)
		if err != nil {
			return nil, err
		}
		s.persisted = last
	}
	s.clock = events.NewClock(cfg.TimeSource().Now, s.persisted)
	return s, nil
}

// Authority returns the AuthorityID the signer writes to.
func (s *Signer) Authority() events.AuthorityID { return events.AuthorityIDOf(s.authorityKey) }

// AuthorityKey returns the authority's public key.
func (s *Signer) AuthorityKey() ed25519.PublicKey { return s.authorityKey }

// Device returns the signing device's id.
func (s *Signer) Device() events.DeviceID {
	return events.DeviceIDOf(s.device.Public().(ed25519.PublicKey))
}

// Token returns the device token the facts cite.
func (s *Signer) Token() []byte { return s.token }

// Observe moves the HLC past a reading seen in another device's fact, so
// the next local write orders after everything this client has seen.
func (s *Signer) Observe(h events.HLC) { s.clock.Observe(h) }

// LastHLC returns the greatest HLC handed out or observed.
func (s *Signer) LastHLC() events.HLC { return s.clock.Last() }

// Sign signs each write as one fact, in order, with increasing HLCs, and
// persists the clock before returning.
func (s *Signer) Sign(writes ...Write) ([]*events.Fact, error) {
	facts := make([]*events.Fact, 0, len(writes))
	for _, w := range writes {
		f, err := s.sign(w)
		if err != nil {
			return nil, err
		}
		facts = append(facts, f)
	}
	if err := s.persist(); err != nil {
		return nil, err
	}
	return facts, nil
}

func (s *Signer) sign(w Write) (*events.Fact, error) {
	if err := events.CheckName("collection", w.Collection); err != nil {
		return nil, err
	}
	if err := events.CheckName("document id", w.Document); err != nil {
		return nil, err
	}
	h := s.clock.Now()
	body := &eventsv1.FactBody{
		AuthorityKey: s.authorityKey,
		Hlc:          &eventsv1.HLC{WallMillis: h.WallMillis, Logical: h.Logical},
		Collection:   w.Collection,
		Document:     w.Document,
		TokenHash:    s.tokenHash,
	}
	switch {
	case w.Delete && w.Fields != nil:
		return nil, events.Errorf(events.ReasonMalformed, "a write is either a put or a delete, not both")
	case w.Delete:
		body.Op = &eventsv1.FactBody_Delete{Delete: &eventsv1.Delete{Reason: w.Reason}}
	default:
		body.Op = &eventsv1.FactBody_Put{Put: &eventsv1.Put{FieldsJson: w.Fields}}
	}
	return events.SignFact(s.device, body)
}

// Batch wraps facts for INGRESS, carrying the signer's token once.
func (s *Signer) Batch(facts []*events.Fact) *eventsv1.FactBatch {
	b := &eventsv1.FactBatch{Tokens: [][]byte{s.token}}
	for _, f := range facts {
		b.Facts = append(b.Facts, f.Proto())
	}
	return b
}

// persist writes the clock's last reading to StateDir, atomically and
// synced, unless a reading at least as new is already on disk.
func (s *Signer) persist() error {
	if s.hlcPath == "" {
		return nil
	}
	s.persistMu.Lock()
	defer s.persistMu.Unlock()
	last := s.clock.Last()
	if last.Compare(s.persisted) <= 0 {
		return nil
	}
	b := last.Bytes()
	if err := atomicfile.Write(s.hlcPath, b[:]); err != nil {
		return events.Wrap(events.ReasonInternal, err, "persist device hlc")
	}
	s.persisted = last
	return nil
}

func loadHLC(path string) (events.HLC, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return events.HLC{}, nil
	}
	if err != nil {
		return events.HLC{}, events.Wrap(events.ReasonInternal, err, "read device hlc")
	}
	h, err := events.HLCFromBytes(b)
	if err != nil {
		return events.HLC{}, events.Wrap(events.ReasonMalformed, err, "device hlc file "+path+" is corrupt")
	}
	return h, nil
}
