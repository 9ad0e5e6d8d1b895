package main

import (
	"github.com/factsync/factsync/services/antientropy"
	"github.com/factsync/factsync/shared/service"
)

func init() {
	registerService(antientropy.Name, func(o *serveOptions) (service.Service, error) {
		return antientropy.New(antientropy.Config{}), nil
	})
}
