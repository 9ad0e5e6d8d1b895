package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"

	"github.com/factsync/factsync/events"
	"github.com/factsync/factsync/sdk"
	"github.com/factsync/factsync/sdk/natsbackend"
	"github.com/factsync/factsync/shared/keys"
	"github.com/spf13/cobra"
)

func init() {
	commands = append(commands, newPutCommand, newGetCommand, newDeleteCommand, newQueryCommand, newWatchCommand)
}

// openStore opens the SDK's NATS backend on the stack the context names,
// acting as the context's device.
func openStore(ctx context.Context, g *globals) (sdk.DataSyncBackend, error) {
	sc, err := readContext(g.contextFile)
	if err != nil {
		return nil, err
	}
	authority, err := keys.LoadPublic(sc.AuthorityKey, keys.Authority)
	if err != nil {
		return nil, events.Wrap(events.ReasonMalformed, err, "authority key named by the context")
	}
	device, err := keys.Load(sc.DeviceKey, keys.Device)
	if err != nil {
		return nil, events.Wrap(events.ReasonMalformed, err, "device key named by the context")
	}
	token, err := readToken(sc.Token)
	if err != nil {
		return nil, err
	}
	nc, err := connectClient(ctx, sc)
	if err != nil {
		return nil, err
	}
	b := natsbackend.New(natsbackend.Options{Conn: nc})
	err = b.Initialize(ctx, sdk.Config{
		AuthorityKey: authority,
		DeviceKey:    device,
		Token:        token,
		// The device's HLC survives between commands, so a put always
		// orders after the previous one even if the wall clock steps back.
		StateDir: filepath.Join(filepath.Dir(g.contextFile), "device-state"),
	})
	if err != nil {
		nc.Close()
		return nil, err
	}
	return closingBackend{b, nc.Close}, nil
}

// closingBackend also closes the connection openStore made.
type closingBackend struct {
	sdk.DataSyncBackend
	closeConn func()
}

func (c closingBackend) Shutdown(ctx context.Context) error {
	err := c.DataSyncBackend.Shutdown(ctx)
	c.closeConn()
	return err
}

// withStore runs fn with an open store and shuts it down afterwards.
func withStore(cmd *cobra.Command, g *globals, fn func(sdk.DocumentStore) error) error {
	b, err := openStore(cmd.Context(), g)
	if err != nil {
		return err
	}
	defer func() { _ = b.Shutdown(context.WithoutCancel(cmd.Context())) }()
	return fn(b.DocumentStore())
}

// parseAssignments reads key=value arguments. A value is JSON where it
// parses as JSON (numbers, true, "quoted", {...}) and a string otherwise,
// so `title=hello` and `title='"hello"'` mean the same.
func parseAssignments(args []string) (map[string]json.RawMessage, error) {
	fields := map[string]json.RawMessage{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, usageErrorf("%q is not key=value", a)
		}
		if err := events.CheckFieldName(k); err != nil {
			return nil, err
		}
		if json.Valid([]byte(v)) {
			fields[k] = json.RawMessage(v)
		} else {
			s, _ := json.Marshal(v)
			fields[k] = s
		}
	}
	if len(fields) == 0 {
		return nil, usageErrorf("name at least one field as key=value")
	}
	return fields, nil
}

func newPutCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "put COLLECTION [ID] key=value ...",
		Short: "Set fields of a document (an omitted id makes a new document)",
		Example: `  factsync put notes n1 title=hello priority=2 tags='["a","b"]'
  factsync put notes title="a new note"            # prints the generated id`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			coll, id, rest := args[0], "", args[1:]
			if !strings.Contains(rest[0], "=") {
				id, rest = rest[0], rest[1:]
			}
			fields, err := parseAssignments(rest)
			if err != nil {
				return err
			}
			return withStore(cmd, g, func(store sdk.DocumentStore) error {
				res, err := store.Upsert(cmd.Context(), coll, id, fields)
				if err != nil {
					return err
				}
				printWrite(g, cmd, coll, res)
				return nil
			})
		},
	}
}

// writeReport is the JSON form of a put or delete.
type writeReport struct {
	Collection string `json:"collection"`
	ID         string `json:"id"`
	Fact       string `json:"fact"`
	HLC        string `json:"hlc"`
}

func printWrite(g *globals, cmd *cobra.Command, coll string, res sdk.WriteResult) {
	r := writeReport{Collection: coll, ID: res.ID, Fact: res.Fact.String(), HLC: res.HLC.String()}
	g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(r, func(w io.Writer) {
		fmt.Fprintf(w, "%s/%s  fact %s  at %s\n", r.Collection, r.ID, r.Fact[:16], r.HLC)
	})
}

func newGetCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "get COLLECTION ID",
		Short: "Print one document",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withStore(cmd, g, func(store sdk.DocumentStore) error {
				doc, err := store.Get(cmd.Context(), args[0], args[1])
				if err != nil {
					return err
				}
				g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(doc, func(w io.Writer) { printDocument(w, doc) })
				return nil
			})
		},
	}
}

func newDeleteCommand(g *globals) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "delete COLLECTION ID",
		Short: "Delete a document (a later put revives the fields it writes)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withStore(cmd, g, func(store sdk.DocumentStore) error {
				res, err := store.Delete(cmd.Context(), args[0], args[1], reason)
				if err != nil {
					return err
				}
				printWrite(g, cmd, args[0], res)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why the document is deleted (kept in the fact)")
	return cmd
}

// queryFlags are the flags query and watch share.
type queryFlags struct {
	where   string
	deleted string
	sort    []string
	limit   int
	cursor  string
}

func (f *queryFlags) add(cmd *cobra.Command, paging bool) {
	cmd.Flags().StringVar(&f.where, "where", "", `filter, e.g. 'priority >= 2 and status == "open" and not (tags contains "done")' (see docs/query-language.md)`)
	cmd.Flags().StringVar(&f.deleted, "deleted", "", `deleted documents: "" (exclude), include or only`)
	if paging {
		cmd.Flags().StringArrayVar(&f.sort, "sort", nil, "sort by field; prefix - for descending; repeatable")
		cmd.Flags().IntVar(&f.limit, "limit", 0, "at most this many documents (0: the server's default page)")
		cmd.Flags().StringVar(&f.cursor, "cursor", "", "continue after a previous page's next_cursor")
	}
}

func (f *queryFlags) query() sdk.Query {
	q := sdk.Query{Where: f.where, Deleted: events.DeletedMode(f.deleted), Limit: f.limit, Cursor: f.cursor}
	for _, s := range f.sort {
		field, desc := strings.CutPrefix(s, "-")
		q.Sort = append(q.Sort, events.SortKey{Field: field, Desc: desc})
	}
	return q
}

func newQueryCommand(g *globals) *cobra.Command {
	f := &queryFlags{}
	cmd := &cobra.Command{
		Use:     "query COLLECTION",
		Short:   "List the documents that match a filter",
		Example: `  factsync query notes --where 'priority >= 2 and status == "open"' --sort -priority --limit 10`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withStore(cmd, g, func(store sdk.DocumentStore) error {
				page, err := store.Query(cmd.Context(), args[0], f.query())
				if err != nil {
					return err
				}
				g.out(cmd.OutOrStdout(), cmd.ErrOrStderr()).result(page, func(w io.Writer) {
					for _, d := range page.Documents {
						printDocument(w, d)
					}
					fmt.Fprintf(w, "(%d documents", len(page.Documents))
					if page.NextCursor != "" {
						fmt.Fprintf(w, "; more with --cursor %s", page.NextCursor)
					}
					fmt.Fprintln(w, ")")
				})
				return nil
			})
		},
	}
	f.add(cmd, true)
	return cmd
}

func newWatchCommand(g *globals) *cobra.Command {
	f := &queryFlags{}
	cmd := &cobra.Command{
		Use:   "watch COLLECTION",
		Short: "Print the matching documents, then every change, until Ctrl-C",
		Long: `Observe a live query: first the matching set (initial), then updated for
each matching change and removed when a document is deleted or stops
matching. With -o json each event is one JSON line.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withStore(cmd, g, func(store sdk.DocumentStore) error {
				obs, err := store.Observe(cmd.Context(), args[0], f.query())
				if err != nil {
					return err
				}
				defer obs.Close()
				p := g.out(cmd.OutOrStdout(), cmd.ErrOrStderr())
				for ev := range obs.Events() {
					printEvent(p, ev)
				}
				if err := obs.Err(); err != nil && cmd.Context().Err() == nil {
					return err
				}
				return nil
			})
		},
	}
	f.add(cmd, false)
	return cmd
}

// watchEvent is the JSON form of one observation event.
type watchEvent struct {
	Event     string         `json:"event"`
	Resync    bool           `json:"resync,omitempty"`
	Cause     string         `json:"cause,omitempty"`
	Documents []sdk.Document `json:"documents,omitempty"`
	Document  *sdk.Document  `json:"document,omitempty"`
}

func printEvent(p *printer, ev sdk.Event) {
	we := watchEvent{Event: ev.Kind.String(), Resync: ev.Resync}
	if ev.Kind == sdk.Initial {
		we.Documents = ev.Documents
	} else {
		d := ev.Document
		we.Document = &d
	}
	if ev.Kind == sdk.Removed {
		we.Cause = ev.Cause.String()
	}
	if p.json {
		b, _ := json.Marshal(we)
		fmt.Fprintln(p.stdout, string(b))
		return
	}
	switch ev.Kind {
	case sdk.Initial:
		label := "initial"
		if ev.Resync {
			label = "initial (resync: this watcher fell behind)"
		}
		fmt.Fprintf(p.stdout, "%s: %d documents\n", label, len(ev.Documents))
		for _, d := range ev.Documents {
			fmt.Fprint(p.stdout, "  ")
			printDocument(p.stdout, d)
		}
	case sdk.Updated:
		fmt.Fprint(p.stdout, "updated: ")
		printDocument(p.stdout, ev.Document)
	case sdk.Removed:
		fmt.Fprintf(p.stdout, "removed (%s): %s/%s\n", we.Cause, ev.Document.Collection, ev.Document.ID)
	}
}

// printDocument prints "collection/id {field: value, ...}" with fields in
// name order.
func printDocument(w io.Writer, d sdk.Document) {
	names := make([]string, 0, len(d.Fields))
	for n := range d.Fields {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s=%s", n, d.Fields[n])
	}
	deleted := ""
	if d.Deleted {
		deleted = " (deleted)"
	}
	fmt.Fprintf(w, "%s/%s%s  %s\n", d.Collection, d.ID, deleted, strings.Join(parts, " "))
}
