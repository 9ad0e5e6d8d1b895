package main

import (
	"github.com/factsync/factsync/services/journal"
	"github.com/factsync/factsync/shared/service"
)

func init() {
	registerService(journal.Name, func(o *serveOptions) (service.Service, error) {
		return journal.New(journal.Config{}), nil
	})
}
