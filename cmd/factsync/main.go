// Command factsync is the one binary of factsync: it runs the services
// (`factsync serve`), a local stack for newcomers (`factsync dev`), and the
// client commands that talk to a running stack.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/factsync/factsync/shared/config"
	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

// run executes the command line and returns the process exit code, so
// tests can drive the CLI in-process.
func run(ctx context.Context, args []string) int {
	return execute(ctx, args, os.Stdout, os.Stderr)
}

// execute runs the command line with the given output streams.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globals{}
	root := newRootCommand(g)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	if isCobraUsageError(err) {
		err = &usageError{msg: err.Error() + " (see --help)"}
	}
	g.out(root.OutOrStdout(), root.ErrOrStderr()).fail(err)
	return exitCode(err)
}

// globals are the flags every command shares.
type globals struct {
	output      string // "text" or "json"
	contextFile string
}

func newRootCommand(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "factsync",
		Short: "Sync authority-owned journals across peers that go offline and disagree",
		Long: `factsync keeps authority-owned journals in sync across peers.

Start a local stack with 'factsync dev', then use the client commands from
another shell: they read the context file that 'factsync dev' writes.

Every flag can also be set from the environment as FACTSYNC_<FLAG>, e.g.
FACTSYNC_NATS=nats://nats:4222 for --nats; a flag on the command line wins.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "text", "output format: text or json")
	root.PersistentFlags().StringVar(&g.contextFile, "context", defaultContextFile,
		"context file written by 'factsync dev'")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		// Every flag can also come from FACTSYNC_<FLAG> (--nats-port is
		// FACTSYNC_NATS_PORT); the command line wins.
		if err := config.ApplyEnv(cmd.Flags(), nil); err != nil {
			return &usageError{msg: err.Error()}
		}
		if g.output != "text" && g.output != "json" {
			return usageErrorf("--output must be text or json, not %q", g.output)
		}
		return nil
	}
	for _, add := range commands {
		root.AddCommand(add(g))
	}
	return root
}

// commands lists the constructors of the top-level commands; each command's
// file appends itself in an init function, so adding a command touches one
// file.
var commands []func(*globals) *cobra.Command

func envOr(key, fallback string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return fallback
}

// isCobraUsageError recognises cobra's own errors about the command line
// (unknown commands and flags, wrong argument counts). Cobra returns them
// as plain errors, so their stable message prefixes are all there is.
func isCobraUsageError(err error) bool {
	msg := err.Error()
	for _, prefix := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "flag needs an argument",
		"invalid argument", "accepts ", "requires at least", "requires at most", "required flag", "bad flag syntax"} {
		if strings.HasPrefix(msg, prefix) {
			return true
		}
	}
	return false
}

func envIntOr(key string, fallback int) int {
	if v, err := strconv.Atoi(os.Getenv(key)); err == nil {
		return v
	}
	return fallback
}

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// tempDir makes a temporary directory and returns its removal.
func tempDir(prefix string) (string, func(), error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", nil, err
	}
	return dir, func() { _ = os.RemoveAll(dir) }, nil
}
