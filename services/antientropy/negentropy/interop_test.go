package negentropy

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/factsync/factsync/events"
)

// interopDir holds the node project that runs nostr-tools' nip77.
const interopDir = "../../../interop/negentropy"

// nodeInitiator prepares the node project once per test binary.
func nodeInitiator(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node is not installed: skipping the interop test against nostr-tools' nip77 (install node and npm to run it)")
	}
	dir, err := filepath.Abs(interopDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "nostr-tools")); err != nil {
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
		}
	}
	return filepath.Join(dir, "initiator.mjs")
}

type nodeResult struct {
	Have     []string `json:"have"`
	Need     []string `json:"need"`
	Rounds   int      `json:"rounds"`
	Messages []string `json:"-"` // what node sent, hex
}

// runNodeInitiator reconciles the initiator set items, held by nostr-tools
// under node, with the Go responder over responder.
func runNodeInitiator(t *testing.T, script string, items []Item, responder Storage, frameLimit int) nodeResult {
	t.Helper()
	rows := make([][2]any, len(items))
	for i, it := range items {
		rows[i] = [2]any{it.Timestamp, it.ID.String()}
	}
	path := filepath.Join(t.TempDir(), "items.json")
	data, _ := json.Marshal(rows)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := []string{script, path}
	if frameLimit != 0 {
		args = append(args, strconv.Itoa(frameLimit))
	}
	cmd := exec.CommandContext(ctx, "node", args...)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Wait() }()
	defer stdin.Close()

	resp, err := NewResponder(responder, frameLimit)
	if err != nil {
		t.Fatal(err)
	}
	var sent []string
	lines := bufio.NewScanner(stdout)
	lines.Buffer(nil, 4<<20)
	for lines.Scan() {
		verb, arg, _ := strings.Cut(lines.Text(), " ")
		switch verb {
		case "MSG":
			sent = append(sent, arg)
			query, err := hex.DecodeString(arg)
			if err != nil {
				t.Fatalf("node sent a message that is not hex: %v", err)
			}
			reply, err := resp.Reconcile(query)
			if err != nil {
				t.Fatalf("go responder: %v", err)
			}
			if _, err := stdin.Write([]byte(hex.EncodeToString(reply) + "\n")); err != nil {
				t.Fatal(err)
			}
		case "DONE":
			var r nodeResult
			if err := json.Unmarshal([]byte(arg), &r); err != nil {
				t.Fatal(err)
			}
			r.Messages = sent
			return r
		default:
			t.Fatalf("unexpected line from node: %q", lines.Text())
		}
	}
	t.Fatalf("node ended without a result: %v\n%s", lines.Err(), stderr.String())
	return nodeResult{}
}

func hexIDs(ids []events.FactID) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id.String()
	}
	slices.Sort(out)
	return out
}

// TestInteropNostrToolsInitiator pairs nostr-tools' nip77 Negentropy (an
// independent implementation, run under node) as the initiator with the Go
// responder, and checks that it learns exactly the true difference; the Go
// initiator is run against the same responder for comparison.
func TestInteropNostrToolsInitiator(t *testing.T) {
	script := nodeInitiator(t)
	cases := []struct {
		name          string
		n             int
		onlyA, onlyB  int
		frameLimit    int
		secondsPerIDs int
	}{
		{"identical", 3000, 0, 0, 0, 5},
		{"one each way", 20_000, 1, 1, 0, 3},
		{"hundreds, same-second ids, 4 KB frames", 20_000, 150, 170, MinFrameSizeLimit, 50},
		{"responder empty", 500, 500, 0, 0, 1},
		{"initiator empty", 500, 0, 500, 0, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var initiatorItems []Item
			var a, b Index
			var onlyA, onlyB []events.FactID
			for i := range tc.n {
				// Realistic seconds (HLC.Seconds of 2023), several ids per
				// second so bounds need id prefixes.
				it := Item{Timestamp: 1_700_000_000 + uint64(i/tc.secondsPerIDs), ID: id(uint64(i))}
				inA, inB := true, true
				switch {
				case len(onlyA) < tc.onlyA && i%(tc.n/max(tc.onlyA, 1)) == 0:
					inB = false
					onlyA = append(onlyA, it.ID)
				case len(onlyB) < tc.onlyB && (i+1)%(tc.n/max(tc.onlyB, 1)) == 0:
					inA = false
					onlyB = append(onlyB, it.ID)
				}
				if inA {
					a.Insert(it)
					initiatorItems = append(initiatorItems, it)
				}
				if inB {
					b.Insert(it)
				}
			}
			b.View(func(sb Storage) {
				got := runNodeInitiator(t, script, initiatorItems, sb, tc.frameLimit)
				slices.Sort(got.Have)
				slices.Sort(got.Need)
				if !slices.Equal(got.Have, hexIDs(onlyA)) {
					t.Errorf("nostr-tools initiator: have %d ids, want the %d only it holds", len(got.Have), len(onlyA))
				}
				if !slices.Equal(got.Need, hexIDs(onlyB)) {
					t.Errorf("nostr-tools initiator: need %d ids, want the %d only the Go responder holds", len(got.Need), len(onlyB))
				}
				a.View(func(sa Storage) {
					have, need, sent := reconcileRecorded(t, sa, sb, tc.frameLimit)
					if !slices.Equal(hexIDs(have), hexIDs(onlyA)) || !slices.Equal(hexIDs(need), hexIDs(onlyB)) {
						t.Errorf("go initiator: have %d/%d, need %d/%d", len(have), len(onlyA), len(need), len(onlyB))
					}
					// Both initiators are deterministic functions of the
					// same set and replies, so byte-for-byte equal messages
					// show the Go encoder matches nostr-tools'.
					if len(sent) != len(got.Messages) {
						t.Fatalf("go initiator sent %d messages, nostr-tools %d", len(sent), len(got.Messages))
					}
					for i := range sent {
						if hex.EncodeToString(sent[i]) != got.Messages[i] {
							t.Fatalf("message %d differs: go %x, nostr-tools %s", i, sent[i], got.Messages[i])
						}
					}
				})
			})
		})
	}
}
