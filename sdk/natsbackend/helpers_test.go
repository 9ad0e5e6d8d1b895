package natsbackend_test

import (
	"errors"

	"github.com/nats-io/nats.go"
)

type natsMsg = nats.Msg

func newMsg(subject string) *nats.Msg { return nats.NewMsg(subject) }

func asError[T error](err error, target *T) bool { return errors.As(err, target) }
