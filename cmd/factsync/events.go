package main

import (
	"encoding/json"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

func init() { commands = append(commands, newEventsCommand) }

// eventKind is one kind of message on a factsync subject and how to show
// it as JSON.
type eventKind struct {
	name   string
	prefix string // subjects that start with it carry this kind
	decode func([]byte) (any, error)
}

// eventKinds lists every kind; the first whose prefix matches a subject
// wins, so more specific prefixes come first.
var eventKinds = []eventKind{
	{"batch", events.IngressPrefix + ".", decodeBatchView},
	{"fact", events.JournalPrefix + ".", func(b []byte) (any, error) {
		f, err := events.DecodeFact(b)
		if err != nil {
			return nil, err
		}
		return factViewOf(f), nil
	}},
	{"token", events.TokenPrefix + ".", func(b []byte) (any, error) {
		return map[string]any{"token_hash": events.TokenHash(b), "bytes": len(b)}, nil
	}},
	{"denial", events.DeniedPrefix + ".", decodeProtoView(func() proto.Message { return &eventsv1.Denial{} })},
	{"change", events.ChangesPrefix + ".", decodeView(events.DecodeChange)},
	{"presence", events.PresencePrefix + ".", decodeView(events.DecodePresence)},
	{"active-version", events.OTAActiveSubject, decodeView(events.DecodeActiveVersion)},
	{"ota-event", events.OTAPrefix + ".", decodeOTAView},
	{"snapshot-progress", events.SnapshotPrefix + ".progress.", decodeView(events.DecodeSnapshotProgress)},
	{"snapshot-event", events.SnapshotPrefix + ".", decodeView(events.DecodeSnapshotEvent)},
	{"fork", events.ReceiptsPrefix + ".fork.", decodeView(events.DecodeForkEvidence)},
	{"note", events.ReceiptsPrefix + ".", func(b []byte) (any, error) { return map[string]string{"note": string(b)}, nil }},
}

func newEventsCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "events", Short: "Read factsync's wire messages"}
	var subject, as string
	decode := &cobra.Command{
		Use:   "decode [FILE]",
		Short: "Print one message body (from FILE or stdin) as JSON",
		Long: `Decode one message body, read from FILE or stdin, and print it as JSON.

Events on streams and event subjects are protobuf (docs/architecture.md,
Encodings); this shows them. Name the subject the message came from with
--subject, or its kind with --as:

  ` + strings.Join(kindNames(), ", ") + `

With the NATS CLI, which passes the subject of stream messages:

  go tool nats stream view OTA --translate 'factsync events decode --subject {{Subject}}'
  go tool nats sub 'fs.changes.>' --translate 'factsync events decode --as change'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, err := pickKind(subject, as)
			if err != nil {
				return err
			}
			in := cmd.InOrStdin()
			if len(args) == 1 && args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return usageErrorf("%v", err)
				}
				defer f.Close()
				in = f
			}
			body, err := io.ReadAll(io.LimitReader(in, 64<<20))
			if err != nil {
				return events.Wrap(events.ReasonUnavailable, err, "read the message body")
			}
			v, err := kind.decode(body)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			if g.output != "json" {
				enc.SetIndent("", "  ")
			}
			return enc.Encode(v)
		},
	}
	decode.Flags().StringVar(&subject, "subject", "", "the subject the message came from, e.g. fs.ota.approved.<id>")
	decode.Flags().StringVar(&as, "as", "", "the message kind, when the subject is not known")
	cmd.AddCommand(decode)
	return cmd
}

func kindNames() []string {
	names := make([]string, len(eventKinds))
	for i, k := range eventKinds {
		names[i] = k.name
	}
	return names
}

// pickKind finds the kind named by --as, or else the kind of --subject.
func pickKind(subject, as string) (eventKind, error) {
	switch {
	case as != "":
		if i := slices.IndexFunc(eventKinds, func(k eventKind) bool { return k.name == as }); i >= 0 {
			return eventKinds[i], nil
		}
		return eventKind{}, usageErrorf("--as %q is not one of %s", as, strings.Join(kindNames(), ", "))
	case subject != "":
		for _, k := range eventKinds {
			if strings.HasPrefix(subject, k.prefix) || subject == k.prefix {
				return k, nil
			}
		}
		return eventKind{}, usageErrorf("subject %q carries no factsync event (request and reply bodies are JSON already)", subject)
	}
	return eventKind{}, usageErrorf("name the message's --subject or its kind with --as")
}

func decodeView[V any](decode func([]byte) (V, error)) func([]byte) (any, error) {
	return func(b []byte) (any, error) {
		v, err := decode(b)
		if err != nil {
			return nil, err
		}
		return v, nil
	}
}

func decodeProtoView(newMsg func() proto.Message) func([]byte) (any, error) {
	return func(b []byte) (any, error) {
		m := newMsg()
		if err := proto.Unmarshal(b, m); err != nil {
			return nil, events.Wrap(events.ReasonMalformed, err, "message does not decode")
		}
		out, err := protojson.Marshal(m)
		if err != nil {
			return nil, events.Wrap(events.ReasonMalformed, err, "message does not render as JSON")
		}
		return json.RawMessage(out), nil
	}
}

// factView shows a fact as people read it: its derived ids, and its fields
// as JSON rather than the bytes the device signed.
type factView struct {
	ID           string                     `json:"id,omitempty"`
	Authority    events.AuthorityID         `json:"authority,omitempty"`
	Device       events.DeviceID            `json:"device,omitempty"`
	WallMillis   uint64                     `json:"wall_millis,omitempty"`
	Logical      uint32                     `json:"logical,omitempty"`
	Collection   string                     `json:"collection,omitempty"`
	Document     string                     `json:"document,omitempty"`
	Delete       bool                       `json:"delete,omitempty"`
	DeleteReason string                     `json:"delete_reason,omitempty"`
	Fields       map[string]json.RawMessage `json:"fields,omitempty"`
	TokenHash    string                     `json:"token_hash,omitempty"`
	Error        *events.ErrorDetail        `json:"error,omitempty"` // a fact of a batch that does not decode
}

func factViewOf(f *events.Fact) factView {
	return factView{
		ID: f.ID.String(), Authority: f.Authority, Device: f.Device,
		WallMillis: f.HLC.WallMillis, Logical: f.HLC.Logical,
		Collection: f.Collection(), Document: f.Document(),
		Delete: f.IsDelete(), DeleteReason: f.Decoded.GetDelete().GetReason(),
		Fields: f.Fields(), TokenHash: f.TokenHash(),
	}
}

// decodeBatchView shows a fact batch; a fact in it that does not decode is
// shown with its reason, as the guard would refuse it alone.
func decodeBatchView(b []byte) (any, error) {
	var batch eventsv1.FactBatch
	if err := proto.Unmarshal(b, &batch); err != nil {
		return nil, events.Wrap(events.ReasonMalformed, err, "fact batch does not decode")
	}
	view := struct {
		Facts  []factView `json:"facts"`
		Tokens []string   `json:"token_hashes"`
	}{Facts: []factView{}, Tokens: []string{}}
	for _, sf := range batch.GetFacts() {
		f, err := events.FactFromProto(sf)
		if err != nil {
			view.Facts = append(view.Facts, factView{Error: &events.ErrorDetail{Reason: events.ReasonOf(err), Detail: detailOf(err)}})
			continue
		}
		view.Facts = append(view.Facts, factViewOf(f))
	}
	for _, t := range batch.GetTokens() {
		view.Tokens = append(view.Tokens, events.TokenHash(t))
	}
	return view, nil
}

// decodeOTAView shows an OTA event with the signed root policy and
// proposal, which are JSON, inline beside their exact bytes.
func decodeOTAView(b []byte) (any, error) {
	ev, err := events.DecodeOTAEvent(b)
	if err != nil {
		return nil, err
	}
	view := struct {
		events.OTAEvent
		RootPolicy json.RawMessage `json:"root_policy,omitempty"`
		Proposed   json.RawMessage `json:"proposed,omitempty"`
	}{OTAEvent: ev}
	if ev.Root != nil && json.Valid(ev.Root.Signed) {
		view.RootPolicy = ev.Root.Signed
	}
	if json.Valid(ev.ProposalBytes) {
		view.Proposed = ev.ProposalBytes
	}
	return view, nil
}
