package sdk

import (
	"context"

	"github.com/factsync/factsync/events"
)

// UpsertWrite checks Upsert's arguments and turns them into a Write,
// generating an id when id is empty. Backends share it so both accept and
// refuse the same inputs.
func UpsertWrite(collection, id string, fields any) (Write, error) {
	raw, err := EncodeFields(fields)
	if err != nil {
		return Write{}, err
	}
	if id == "" {
		id = NewDocumentID()
	}
	return Write{Collection: collection, Document: id, Fields: raw}, nil
}

// DeleteWrite turns Delete's arguments into a Write.
func DeleteWrite(collection, id, reason string) Write {
	return Write{Collection: collection, Document: id, Delete: true, Reason: reason}
}

// ResultOf describes the fact a write produced.
func ResultOf(f *events.Fact) WriteResult {
	return WriteResult{ID: f.Document(), Fact: f.ID, HLC: f.HLC}
}

// Applier is the part of a DocumentStore that every write goes through.
type Applier interface {
	Apply(ctx context.Context, writes ...Write) ([]WriteResult, error)
}

// ApplyUpsert is DocumentStore.Upsert for a backend whose writes all go
// through Apply: one upsert as a batch of one.
func ApplyUpsert(ctx context.Context, a Applier, collection, id string, fields any) (WriteResult, error) {
	w, err := UpsertWrite(collection, id, fields)
	if err != nil {
		return WriteResult{}, err
	}
	return applyOne(ctx, a, w)
}

// ApplyDelete is DocumentStore.Delete for a backend whose writes all go
// through Apply.
func ApplyDelete(ctx context.Context, a Applier, collection, id, reason string) (WriteResult, error) {
	return applyOne(ctx, a, DeleteWrite(collection, id, reason))
}

func applyOne(ctx context.Context, a Applier, w Write) (WriteResult, error) {
	res, err := a.Apply(ctx, w)
	if err != nil {
		return WriteResult{}, err
	}
	return res[0], nil
}
