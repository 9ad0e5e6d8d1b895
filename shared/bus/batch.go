package bus

import "github.com/nats-io/nats.go/jetstream"

// TakeReady appends to batch the messages already waiting on msgs, up to
// limit in all, without blocking. Consumers that commit in batches (one
// fsync or one atomic publish per batch) call it after a blocking receive,
// so a busy stream fills the batch and a quiet one is not kept waiting.
func TakeReady(batch []jetstream.Msg, msgs <-chan jetstream.Msg, limit int) []jetstream.Msg {
	for len(batch) < limit {
		select {
		case m, ok := <-msgs:
			if !ok {
				return batch
			}
			batch = append(batch, m)
		default:
			return batch
		}
	}
	return batch
}
