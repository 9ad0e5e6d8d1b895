// Package config lets every factsync flag also be set from the
// environment: --nats-port is FACTSYNC_NATS_PORT. A flag given on the
// command line wins over the environment, which wins over the default,
// so a container can be configured by env and a person can still
// override one setting by hand.
package config

import (
	"fmt"
	"os"
	"strings"

	"github.com/factsync/factsync/events"
	"github.com/spf13/pflag"
)

// EnvPrefix starts every factsync environment variable.
const EnvPrefix = "FACTSYNC_"

// EnvName is the variable that sets the flag named flag.
func EnvName(flag string) string {
	return EnvPrefix + strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(flag))
}

// ApplyEnv sets each flag of fs that was not given on the command line
// from its variable, if that is set. Call it after parsing (for cobra, in
// PersistentPreRunE on cmd.Flags()). lookup is os.LookupEnv when nil.
func ApplyEnv(fs *pflag.FlagSet, lookup func(string) (string, bool)) error {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		name := EnvName(f.Name)
		value, ok := lookup(name)
		if !ok {
			return
		}
		if serr := fs.Set(f.Name, value); serr != nil {
			err = events.Errorf(events.ReasonMalformed, "%s=%q is not a valid --%s: %v", name, value, f.Name, serr)
		}
	})
	return err
}

// DescribeEnv appends "(env FACTSYNC_X)" to each flag's usage so --help
// shows how to set it from the environment.
func DescribeEnv(fs *pflag.FlagSet) {
	fs.VisitAll(func(f *pflag.Flag) {
		suffix := fmt.Sprintf(" (env %s)", EnvName(f.Name))
		if !strings.HasSuffix(f.Usage, suffix) {
			f.Usage += suffix
		}
	})
}
