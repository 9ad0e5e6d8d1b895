package receipts

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/factsync/factsync/events"
	"golang.org/x/mod/sumdb/tlog"
)

// decodeReceipt decodes a receipt's JSON exactly as json.Unmarshal does.
//
// It first tries to read the one layout the receipts service writes
// (json.Marshal of a Receipt: these keys in this order, no whitespace
// between tokens) directly. encoding/json scans its input twice, byte by
// byte, which for a receipt of 20 proof hashes costs about a fifth of an
// Ed25519 verification, and that is most of what verifying a receipt
// costs besides the signature. Any other layout (another key order,
// indentation, escapes other than \n, a field encoding/json would
// coerce) goes to json.Unmarshal, so both paths give the same receipt or
// the same failure. FuzzDecodeReceipt holds the two to that.
func decodeReceipt(raw []byte) (Receipt, error) {
	if r, ok := decodeCompactReceipt(raw); ok {
		return r, nil
	}
	var r Receipt
	if err := json.Unmarshal(raw, &r); err != nil {
		return Receipt{}, events.Wrap(events.ReasonMalformed, err, "receipt is not valid receipt JSON")
	}
	return r, nil
}

// decodeCompactReceipt reads raw if it is json.Marshal's layout of a
// Receipt, and reports false for anything else, valid or not.
func decodeCompactReceipt(raw []byte) (Receipt, bool) {
	var r Receipt
	rest, ok := bytes.CutPrefix(bytes.TrimRight(raw, " \t\r\n"), []byte(`{"fact_id":`))
	if !ok {
		return r, false
	}
	if r.FactID, rest, ok = compactString(rest); !ok {
		return r, false
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`,"leaf_index":`)); !ok {
		return r, false
	}
	end := 0
	for end < len(rest) && (rest[end] == '-' || '0' <= rest[end] && rest[end] <= '9') {
		end++
	}
	// ParseInt accepts "+1" and "01", JSON does not: the number must be
	// what FormatInt prints.
	index, err := strconv.ParseInt(string(rest[:end]), 10, 64)
	if err != nil || strconv.FormatInt(index, 10) != string(rest[:end]) {
		return r, false
	}
	r.LeafIndex = index
	if rest, ok = bytes.CutPrefix(rest[end:], []byte(`,"checkpoint":`)); !ok {
		return r, false
	}
	if r.Checkpoint, rest, ok = compactString(rest); !ok {
		return r, false
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`,"inclusion_proof":`)); !ok {
		return r, false
	}
	if rest, ok = bytes.CutPrefix(rest, []byte("null}")); ok {
		return r, len(rest) == 0
	}
	if rest, ok = bytes.CutPrefix(rest, []byte("[")); !ok {
		return r, false
	}
	// A hash is 46 bytes: quote, 44 base64 characters, quote. That is
	// what tlog.Hash.UnmarshalJSON accepts, and encoding/json hands it
	// the quoted string as it stands.
	const quotedHash = 2 + 44
	r.InclusionProof = make([]tlog.Hash, 0, len(rest)/(quotedHash+1))
	for len(rest) > 0 && rest[0] != ']' {
		if len(r.InclusionProof) > 0 {
			if rest, ok = bytes.CutPrefix(rest, []byte(",")); !ok {
				return r, false
			}
		}
		var h tlog.Hash
		if len(rest) < quotedHash || h.UnmarshalJSON(rest[:quotedHash]) != nil {
			return r, false
		}
		r.InclusionProof = append(r.InclusionProof, h)
		rest = rest[quotedHash:]
	}
	return r, bytes.Equal(rest, []byte("]}"))
}

// compactString reads a JSON string at the start of b that decodes to
// its own bytes but for \n escapes, and returns it and what follows. It
// reports false for any other escape, a control character or invalid
// UTF-8 (which encoding/json would replace), leaving those to
// json.Unmarshal.
func compactString(b []byte) (string, []byte, bool) {
	if len(b) == 0 || b[0] != '"' {
		return "", nil, false
	}
	// An escaped quote ends s early, with a backslash that is not \n.
	end := bytes.IndexByte(b[1:], '"') + 1
	if end == 0 {
		return "", nil, false
	}
	s := b[1:end]
	escaped, ascii := false, true
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			if i+1 == len(s) || s[i+1] != 'n' {
				return "", nil, false
			}
			escaped = true
			i++
		case c < 0x20:
			return "", nil, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	if !ascii && !utf8.Valid(s) {
		return "", nil, false
	}
	if escaped {
		return strings.ReplaceAll(string(s), `\n`, "\n"), b[end+1:], true
	}
	return string(s), b[end+1:], true
}
