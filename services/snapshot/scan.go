package snapshot

import (
	"context"
	"crypto/ed25519"
	"strings"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats.go/jetstream"
)

// ScanJournal reads every fact of auth in JOURNAL (and the tokens they
// cite) as it stands now, and calls fact (with the fact's JOURNAL
// sequence) and token for each. It returns the authority key (nil when
// JOURNAL holds no fact of auth). Messages that are not accepted facts are
// skipped, as the journal skips them.
func ScanJournal(ctx context.Context, js jetstream.JetStream, auth events.AuthorityID, fact func(f *events.Fact, seq uint64) error, token func([]byte)) (ed25519.PublicKey, error) {
	var key ed25519.PublicKey
	err := bus.Scan(ctx, js, events.StreamJournal, []string{events.JournalAuthorityFilter(auth), events.TokenSubject(auth, ">")}, func(m jetstream.Msg) error {
		if strings.HasPrefix(m.Subject(), events.TokenPrefix+".") {
			token(m.Data())
			return nil
		}
		f, err := events.DecodeFact(m.Data())
		if err != nil || f.Authority != auth {
			return nil
		}
		meta, err := m.Metadata()
		if err != nil {
			return err
		}
		key = f.AuthorityKey()
		return fact(f, meta.Sequence.Stream)
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if events.ReasonOf(err) == events.ReasonInternal {
			return nil, events.Wrap(events.ReasonUnavailable, err, "read JOURNAL")
		}
		return nil, err
	}
	return key, nil
}

// BuildFromJournal builds the snapshot of auth at cut from JOURNAL.
func BuildFromJournal(ctx context.Context, js jetstream.JetStream, auth events.AuthorityID, cut uint32) (*Builder, error) {
	return buildFromJournal(ctx, js, auth, cut, nil, nil)
}

// buildFromJournal builds the snapshot of auth at cut from JOURNAL, on a
// peer whose prunes removed base from it (nil: none), and calls seen, when
// set, with every fact and its JOURNAL sequence.
func buildFromJournal(ctx context.Context, js jetstream.JetStream, auth events.AuthorityID, cut uint32, base *idSum, seen func(*events.Fact, uint64)) (*Builder, error) {
	var b *Builder
	var tokens [][]byte
	key, err := ScanJournal(ctx, js, auth, func(f *events.Fact, seq uint64) error {
		if b == nil {
			b = NewBuilder(f.AuthorityKey(), cut)
			b.pruned = base
		}
		if seen != nil {
			seen(f, seq)
		}
		return b.AddFact(f)
	}, func(t []byte) { tokens = append(tokens, t) })
	if err != nil {
		return nil, err
	}
	if key == nil {
		return nil, events.Errorf(events.ReasonNotFound, "JOURNAL holds no fact of authority %s", auth)
	}
	for _, t := range tokens {
		b.AddToken(t)
	}
	return b, nil
}
