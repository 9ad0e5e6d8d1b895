package receipts

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// receiptLayouts are receipts in the layout the service writes and in
// others, each of which must decode as json.Unmarshal decodes it.
func receiptLayouts(t testing.TB) []string {
	l, leaves := signedLog(t, testKey("peer"), 37)
	r, err := l.Receipt(leaves[13].Fact)
	if err != nil {
		t.Fatal(err)
	}
	compact := string(mustJSON(r))
	indented, _ := json.MarshalIndent(r, "", "  ")
	fact := `"fact_id":"` + r.FactID + `"`
	return []string{
		compact,
		compact + "\n",
		" " + compact,
		string(indented),
		strings.Replace(compact, `"leaf_index":13`, `"leaf_index":13.0`, 1),
		strings.Replace(compact, `"leaf_index":13`, `"leaf_index":013`, 1),
		strings.Replace(compact, `"leaf_index":13`, `"leaf_index":-0`, 1),
		strings.Replace(compact, `"leaf_index":13`, `"leaf_index":99999999999999999999`, 1),
		strings.Replace(compact, `\n`, `\u000a`, 1),
		strings.Replace(compact, `\n`, `\t`, 1),
		strings.Replace(compact, "—", `\u2014`, 1),
		strings.Replace(compact, "—", "\xe2\x80", 1),
		strings.Replace(compact, `"inclusion_proof":[`, `"inclusion_proof":["",`, 1),
		strings.Replace(compact, `"inclusion_proof":[`, `"inclusion_proof":[ `, 1),
		compact[:strings.Index(compact, `"inclusion_proof":`)] + `"inclusion_proof":null}`,
		compact[:strings.Index(compact, `"inclusion_proof":`)] + `"inclusion_proof":[]}`,
		compact[:strings.Index(compact, `"inclusion_proof":`)] + `"inclusion_proof":[,]}`,
		strings.Replace(compact, `"]}`, `",]}`, 1),
		strings.Replace(compact, `"]}`, `"]} x`, 1),
		strings.Replace(compact, fact, `"Fact_ID":"`+r.FactID+`"`, 1),
		strings.Replace(compact, fact, fact+`,`+fact, 1),
		strings.Replace(compact, fact, `"fact_id":"\u0041"`, 1),
		strings.Replace(compact, fact, `"fact_id":"`+"\x01"+`"`, 1),
		compact[:len(compact)/2],
		`{}`,
		``,
	}
}

func TestCompactReceiptDecodesAsJSONDoes(t *testing.T) {
	layouts := receiptLayouts(t)
	if _, ok := decodeCompactReceipt([]byte(layouts[0])); !ok {
		t.Fatal("the layout the service writes does not take the direct path")
	}
	for _, raw := range layouts {
		checkDecodesAsJSON(t, []byte(raw))
	}
}

// FuzzDecodeReceipt holds decodeReceipt to json.Unmarshal: the same
// receipt, or a failure where json.Unmarshal fails.
func FuzzDecodeReceipt(f *testing.F) {
	for _, raw := range receiptLayouts(f) {
		f.Add([]byte(raw))
	}
	f.Fuzz(checkDecodesAsJSON)
}

func checkDecodesAsJSON(t *testing.T, raw []byte) {
	var want Receipt
	wantErr := json.Unmarshal(raw, &want)
	got, err := decodeReceipt(raw)
	switch {
	case (err == nil) != (wantErr == nil):
		t.Fatalf("%q: decodeReceipt says %v, json.Unmarshal says %v", raw, err, wantErr)
	case err == nil && !reflect.DeepEqual(got, want):
		t.Fatalf("%q: decodeReceipt gives %+v, json.Unmarshal gives %+v", raw, got, want)
	}
}
