package k8s

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestDiffApplyRoundTrip(t *testing.T) {
	tests := []struct{ name, before, after string }{
		{"equal", `{"a":1}`, `{"a":1}`},
		{"add and remove keys", `{"a":1,"b":2}`, `{"a":1,"c":{"d":[1]}}`},
		{"escaped keys", `{"x":{"a/b":1}}`, `{"x":{"a/b":2,"c~d":3}}`},
		{"append", `{"l":[1,2]}`, `{"l":[1,2,3,4]}`},
		{"prepend by name", `{"l":[{"name":"a","v":1}]}`, `{"l":[{"name":"s"},{"name":"a","v":2}]}`},
		{"shrink replaces", `{"l":[1,2,3]}`, `{"l":[1]}`},
		{"type change", `{"a":{"b":1}}`, `{"a":[1]}`},
		{"null value", `{"a":1}`, `{"a":null}`},
		{"top-level list", `[1]`, `[0,1]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := decodeJSONValue([]byte(tc.before))
			after, _ := decodeJSONValue([]byte(tc.after))
			ops := Diff(before, after)
			if tc.before == tc.after && len(ops) != 0 {
				t.Fatalf("ops for equal documents: %+v", ops)
			}
			// Through JSON and back, as a webhook's patch travels.
			b, err := json.Marshal(ops)
			if err != nil {
				t.Fatal(err)
			}
			var decoded []Op
			if err := json.Unmarshal(b, &decoded); err != nil {
				t.Fatal(err)
			}
			start, _ := decodeJSONValue([]byte(tc.before))
			got, err := Apply(start, decoded)
			if err != nil {
				t.Fatalf("Apply(%s): %v", b, err)
			}
			gotJSON, _ := json.Marshal(got)
			if !jsonEqual(t, gotJSON, []byte(tc.after)) {
				t.Fatalf("patch %s turned %s into %s, want %s", b, tc.before, gotJSON, tc.after)
			}
		})
	}
}

func TestApplyRejectsBadPaths(t *testing.T) {
	for _, op := range []Op{
		{Op: "replace", Path: "/missing", Value: 1},
		{Op: "remove", Path: "/a/b"},
		{Op: "add", Path: "/l/9", Value: 1},
		{Op: "replace", Path: "/l/-", Value: 1},
		{Op: "add", Path: "no-slash", Value: 1},
		{Op: "remove", Path: ""},
	} {
		doc, _ := decodeJSONValue([]byte(`{"a":1,"l":[1]}`))
		if _, err := Apply(doc, []Op{op}); err == nil {
			t.Errorf("Apply(%+v) succeeded, want an error", op)
		}
	}
}

func TestOpMarshalKeepsNullValues(t *testing.T) {
	b, _ := json.Marshal([]Op{{Op: "replace", Path: "/a"}, {Op: "remove", Path: "/b"}})
	var got []map[string]any
	_ = json.Unmarshal(b, &got)
	if _, ok := got[0]["value"]; !ok {
		t.Fatalf("replace lost its null value: %s", b)
	}
	if _, ok := got[1]["value"]; ok {
		t.Fatalf("remove has a value: %s", b)
	}
	if !reflect.DeepEqual(got[1], map[string]any{"op": "remove", "path": "/b"}) {
		t.Fatalf("remove = %v", got[1])
	}
}
