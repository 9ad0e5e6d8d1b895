package sdk

import "github.com/factsync/factsync/events"

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
