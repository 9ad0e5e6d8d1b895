package config_test

import (
	"strings"
	"testing"

	"github.com/factsync/factsync/shared/config"
	"github.com/spf13/pflag"
)

func flags() (*pflag.FlagSet, *string, *int) {
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	data := fs.String("data", "./.factsync", "data directory")
	port := fs.Int("nats-port", 4222, "NATS client port")
	return fs, data, port
}

func TestCommandLineBeatsEnvBeatsDefault(t *testing.T) {
	env := map[string]string{"FACTSYNC_DATA": "/srv/fs", "FACTSYNC_NATS_PORT": "5222"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }

	fs, data, port := flags()
	if err := fs.Parse([]string{"--nats-port", "6222"}); err != nil {
		t.Fatal(err)
	}
	if err := config.ApplyEnv(fs, lookup); err != nil {
		t.Fatal(err)
	}
	if *data != "/srv/fs" || *port != 6222 {
		t.Fatalf("data=%q port=%d, want env data and command-line port", *data, *port)
	}

	fs, data, port = flags()
	if err := config.ApplyEnv(fs, func(string) (string, bool) { return "", false }); err != nil {
		t.Fatal(err)
	}
	if *data != "./.factsync" || *port != 4222 {
		t.Fatalf("defaults changed without env: %q %d", *data, *port)
	}
}

func TestBadEnvValueNamesVariable(t *testing.T) {
	fs, _, _ := flags()
	err := config.ApplyEnv(fs, func(k string) (string, bool) { return "lots", k == "FACTSYNC_NATS_PORT" })
	if err == nil || !strings.Contains(err.Error(), "FACTSYNC_NATS_PORT") || !strings.Contains(err.Error(), "--nats-port") {
		t.Fatalf("got %v", err)
	}
}

func TestDescribeEnv(t *testing.T) {
	fs, _, _ := flags()
	config.DescribeEnv(fs)
	config.DescribeEnv(fs)
	if u := fs.Lookup("nats-port").Usage; u != "NATS client port (env FACTSYNC_NATS_PORT)" {
		t.Fatalf("usage %q", u)
	}
}
