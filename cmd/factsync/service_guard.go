package main

import (
	"github.com/factsync/factsync/services/guard"
	"github.com/factsync/factsync/shared/service"
)

func init() {
	registerService(guard.Name, func(o *serveOptions) (service.Service, error) {
		return guard.New(guard.Config{PolicyDir: envOr("FACTSYNC_POLICY_DIR", "")}), nil
	})
}
