package main

import (
	"github.com/factsync/factsync/services/receipts"
	"github.com/factsync/factsync/shared/service"
)

func init() {
	registerService(receipts.Name, func(o *serveOptions) (service.Service, error) {
		return receipts.New(receipts.Config{}), nil
	})
}
