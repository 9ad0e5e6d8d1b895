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

// Delivery moves a pull consumer's messages onto a buffered channel, for a
// batch loop that receives one message and then TakeReady's the rest.
//
// The buffer is what makes batching work: while the loop commits one batch
// (an fsync, a publish) the next gathers in the channel, and TakeReady
// finds it. Over an unbuffered channel it would find one message at most,
// and a backlog would be committed one message at a time.
type Delivery struct {
	// C delivers the messages in order. It is closed when the iterator
	// fails (see Err) or Stop is called.
	C    <-chan jetstream.Msg
	iter jetstream.MessagesContext
	stop chan struct{}
	done chan struct{}
	err  error // the iterator's error; set before C is closed
}

// Deliver starts moving iter's messages onto a channel of the given
// buffer size. The caller must call Stop.
func Deliver(iter jetstream.MessagesContext, buffer int) *Delivery {
	c := make(chan jetstream.Msg, buffer)
	d := &Delivery{C: c, iter: iter, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(d.done)
		defer close(c)
		for {
			m, err := iter.Next()
			if err != nil {
				d.err = err
				return
			}
			select {
			case c <- m:
			case <-d.stop:
				return
			}
		}
	}()
	return d
}

// Err is the iterator's error, for a caller that found C closed (and
// nil after Stop). It must not be called before C is closed: it waits.
func (d *Delivery) Err() error {
	<-d.done
	return d.err
}

// Stop ends the delivery and waits for its goroutine. Messages still in
// the buffer are dropped unacknowledged, so the stream redelivers them.
func (d *Delivery) Stop() {
	close(d.stop)
	d.iter.Stop()
	<-d.done
}
