package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/factsync/factsync/events"
	eventsv1 "github.com/factsync/factsync/events/v1"
	"github.com/factsync/factsync/shared/bus"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
)

func init() { commands = append(commands, newDeniedCommand) }

func newDeniedCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "denied", Short: "Events the guard refused, with their reason codes"}
	var last int
	var follow bool
	var reason string
	tail := &cobra.Command{
		Use:   "tail",
		Short: "Print the latest refusals from the DENIED stream (and follow new ones with -f)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sc, err := readContext(g.contextFile)
			if err != nil {
				return err
			}
			// Reading a stream needs the JetStream API, which the client
			// user may not use: this is an operator's command.
			url := sc.NATSOpsURL
			if url == "" {
				return events.Errorf(events.ReasonUnavailable, "the context names no operator NATS URL (nats_ops_url) to read DENIED with")
			}
			nc, err := bus.Connect(cmd.Context(), url, bus.ConnectOptions{Name: "factsync-denied-tail", Extra: []nats.Option{nats.MaxReconnects(0)}})
			if err != nil {
				return err
			}
			defer nc.Close()
			return tailDenied(cmd, g, nc, last, follow, reason)
		},
	}
	tail.Flags().IntVarP(&last, "last", "n", 20, "how many recent refusals to print first")
	tail.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new refusals until Ctrl-C")
	tail.Flags().StringVar(&reason, "reason", "", "only this reason code, e.g. bad_signature")
	cmd.AddCommand(tail)
	return cmd
}

// deniedLine is the JSON form of one refusal.
type deniedLine struct {
	Seq     uint64    `json:"seq"`
	At      time.Time `json:"at"`
	Reason  string    `json:"reason"`
	Subject string    `json:"subject"`
	FactID  string    `json:"fact_id,omitempty"`
	Detail  string    `json:"detail"`
	Payload int       `json:"payload_bytes"`
}

func tailDenied(cmd *cobra.Command, g *globals, nc *nats.Conn, last int, follow bool, reason string) error {
	ctx := cmd.Context()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	stream, err := js.Stream(ctx, events.StreamDenied)
	if err != nil {
		return events.Wrap(events.ReasonUnavailable, err, "open the DENIED stream")
	}
	filter := events.DeniedPrefix + ".>"
	if reason != "" {
		filter = events.DeniedSubject(events.Reason(reason))
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return err
	}
	start := uint64(1)
	if info.State.LastSeq > uint64(last) {
		start = info.State.LastSeq - uint64(last) + 1
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter}, DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: start,
	})
	if err != nil {
		return err
	}
	p := g.out(cmd.OutOrStdout(), cmd.ErrOrStderr())
	for {
		pending := cons.CachedInfo().NumPending
		if !follow && pending == 0 {
			return nil
		}
		wait := time.Second
		if follow {
			wait = 30 * time.Second
		}
		msg, err := cons.Next(jetstream.FetchMaxWait(wait))
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil && follow:
			continue
		case err != nil:
			return nil
		}
		printDenial(p, msg)
	}
}

func printDenial(p *printer, msg jetstream.Msg) {
	md, _ := msg.Metadata()
	var d eventsv1.Denial
	line := deniedLine{}
	if md != nil {
		line.Seq = md.Sequence.Stream
	}
	if err := proto.Unmarshal(msg.Data(), &d); err != nil {
		line.Reason, line.Detail = "?", "undecodable denial: "+err.Error()
	} else {
		line.At = time.UnixMilli(d.GetDeniedAtUnixMillis()).UTC()
		line.Reason, line.Subject, line.FactID, line.Detail, line.Payload = d.GetReason(), d.GetSubject(), d.GetFactId(), d.GetDetail(), len(d.GetPayload())
	}
	if p.json {
		b, _ := json.Marshal(line)
		fmt.Fprintln(p.stdout, string(b))
		return
	}
	fact := ""
	if len(line.FactID) >= 16 {
		fact = " fact " + line.FactID[:16]
	}
	fmt.Fprintf(p.stdout, "%s  %-14s %s%s: %s\n", line.At.Format(time.RFC3339), line.Reason, line.Subject, fact, line.Detail)
}
