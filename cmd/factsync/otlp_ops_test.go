package main

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

// collector is an OTLP gRPC trace receiver that remembers span names and
// the service.name of the processes that sent them.
type collector struct {
	collectortrace.UnimplementedTraceServiceServer
	mu       sync.Mutex
	spans    map[string]bool
	services map[string]bool
}

func (c *collector) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.name" {
				c.services[a.GetValue().GetStringValue()] = true
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				c.spans[s.GetName()] = true
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func (c *collector) has(names ...string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range names {
		if !c.spans[n] {
			return false
		}
	}
	return c.services["factsync"]
}

// `factsync dev --otlp ADDR` really exports: a fact written with the CLI
// reaches a collector at ADDR as the guard's and the journal's spans.
func TestDevOTLPExportsSpans(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	col := &collector{spans: map[string]bool{}, services: map[string]bool{}}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, col)
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()

	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	exit := make(chan int, 1)
	go func() {
		exit <- run(ctx, []string{"dev", "--data", dir, "--nats-port", "-1", "--http", "127.0.0.1:0", "--log-level", "warn", "--otlp", ln.Addr().String()})
	}()
	defer func() {
		cancel()
		select {
		case <-exit:
		case <-time.After(30 * time.Second):
			t.Error("factsync dev did not stop")
		}
	}()
	ctxFile := filepath.Join(dir, "context.json")
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if sc, err := readContext(ctxFile); err == nil && readyz(sc.HTTPURL) == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("factsync dev not ready within 60s")
		}
	}
	if code := run(context.Background(), []string{"--context", ctxFile, "put", "notes", "n1", "title=traced"}); code != 0 {
		t.Fatalf("put exited %d", code)
	}
	// Spans are batched (5 s by default); stopping dev flushes them.
	cancel()
	select {
	case code := <-exit:
		if code != 0 {
			t.Fatalf("dev exited %d", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("factsync dev did not stop")
	}
	exit <- 0 // for the deferred wait
	if !col.has("guard.decide", "journal fold") {
		col.mu.Lock()
		defer col.mu.Unlock()
		t.Fatalf("collector got spans %v from services %v", col.spans, col.services)
	}
}
