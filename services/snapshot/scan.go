package snapshot

import (
	"context"
	"crypto/ed25519"
	"strings"

	"github.com/factsync/factsync/events"
	"github.com/nats-io/nats.go/jetstream"
)

// ScanJournal reads every fact of auth in JOURNAL (and the tokens they
// cite) as it stands now, and calls fact and token for each. It returns
// the authority key (nil when JOURNAL holds no fact of auth). Messages
// that are not accepted facts are skipped, as the journal skips them.
func ScanJournal(ctx context.Context, js jetstream.JetStream, auth events.AuthorityID, fact func(*events.Fact) error, token func([]byte)) (ed25519.PublicKey, error) {
	cons, err := js.OrderedConsumer(ctx, events.StreamJournal, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.JournalAuthorityFilter(auth), events.TokenSubject(auth, ">")},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, events.Wrap(events.ReasonUnavailable, err, "read JOURNAL")
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, events.Wrap(events.ReasonUnavailable, err, "read JOURNAL")
	}
	var key ed25519.PublicKey
	if info.NumPending == 0 {
		return nil, nil
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(1024))
	if err != nil {
		return nil, events.Wrap(events.ReasonUnavailable, err, "read JOURNAL")
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, events.Wrap(events.ReasonUnavailable, err, "read JOURNAL")
		}
		meta, err := m.Metadata()
		if err != nil {
			return nil, events.Wrap(events.ReasonUnavailable, err, "read JOURNAL")
		}
		if strings.HasPrefix(m.Subject(), events.TokenPrefix+".") {
			token(m.Data())
		} else if f, err := events.DecodeFact(m.Data()); err == nil && f.Authority == auth {
			key = f.AuthorityKey()
			if err := fact(f); err != nil {
				return nil, err
			}
		}
		if meta.NumPending == 0 {
			return key, nil
		}
	}
}

// BuildFromJournal builds the snapshot of auth at cut from JOURNAL.
func BuildFromJournal(ctx context.Context, js jetstream.JetStream, auth events.AuthorityID, cut uint32) (*Builder, error) {
	var b *Builder
	var tokens [][]byte
	key, err := ScanJournal(ctx, js, auth, func(f *events.Fact) error {
		if b == nil {
			b = NewBuilder(f.AuthorityKey(), cut)
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
