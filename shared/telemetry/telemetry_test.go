package telemetry_test

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/factsync/factsync/shared/telemetry"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestMetricsAndSpans(t *testing.T) {
	t.Setenv(telemetry.EnvOTLPEndpoint, "")
	spans := tracetest.NewInMemoryExporter()
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{ServiceName: "factsync", SpanExporter: spans})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := tel.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	}()

	hist, err := tel.Meter("journal").Float64Histogram("messaging.process.duration", metric.WithUnit("s"))
	if err != nil {
		t.Fatal(err)
	}
	hist.Record(context.Background(), 0.25)
	_, span := tel.Tracer("journal").Start(context.Background(), "fold")
	span.End()

	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{"messaging_process_duration_seconds_bucket", "go_goroutines", `service_name="factsync"`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if got := spans.GetSpans(); len(got) != 1 || got[0].Name != "fold" {
		t.Fatalf("exported spans %v, want one named fold", got)
	}
}

func TestOTLPEndpointBuildsExporterWithoutCollector(t *testing.T) {
	// gRPC dials lazily, so an unreachable collector does not fail Setup;
	// Shutdown must still return within its context.
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{ServiceName: "factsync", OTLPEndpoint: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2e9)
	defer cancel()
	_ = tel.Shutdown(ctx)
}

func TestServiceNameRequired(t *testing.T) {
	if _, err := telemetry.Setup(context.Background(), telemetry.Config{}); err == nil {
		t.Fatal("Setup without a service name succeeded")
	}
}
