package sim

import (
	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/shared/fold"
)

// Folder folds one peer's facts into documents. The simulator checks that
// every peer's Digest agrees once their fact sets do, so a Folder whose
// result depends on the order or repetition of Apply calls fails it.
type Folder interface {
	Apply(f *events.Fact)
	Digest() [32]byte
}

// RealFold is the fold every factsync peer runs: shared/fold.
func RealFold() Folder { return realFold{fold.New()} }

type realFold struct{ s *fold.State }

func (r realFold) Apply(f *events.Fact) { r.s.Apply(f) }
func (r realFold) Digest() [32]byte     { return r.s.Digest() }
