package k8s

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// Op is one RFC 6902 JSON patch operation; only add, remove and replace are
// produced and applied.
type Op struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// MarshalJSON writes Value even when it is null or empty, except for remove.
func (o Op) MarshalJSON() ([]byte, error) {
	if o.Op == "remove" {
		return json.Marshal(struct {
			Op   string `json:"op"`
			Path string `json:"path"`
		}{o.Op, o.Path})
	}
	return json.Marshal(struct {
		Op    string `json:"op"`
		Path  string `json:"path"`
		Value any    `json:"value"`
	}{o.Op, o.Path, o.Value})
}

// Diff returns the operations that turn before into after, both generic JSON
// values (maps, slices, strings, json.Number, bools, nil). Objects are
// compared key by key; lists that kept or grew their length element by element
// (new elements added at the front or the end); any other changed list or
// value is replaced whole.
func Diff(before, after any) []Op {
	var ops []Op
	diff("", before, after, &ops)
	return ops
}

func diff(path string, a, b any, ops *[]Op) {
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if aok && bok {
		for _, k := range sortedKeys(am) {
			if _, ok := bm[k]; !ok {
				*ops = append(*ops, Op{Op: "remove", Path: path + "/" + escape(k)})
			}
		}
		for _, k := range sortedKeys(bm) {
			av, ok := am[k]
			if !ok {
				*ops = append(*ops, Op{Op: "add", Path: path + "/" + escape(k), Value: bm[k]})
				continue
			}
			diff(path+"/"+escape(k), av, bm[k], ops)
		}
		return
	}
	as, aok := a.([]any)
	bs, bok := b.([]any)
	if aok && bok && len(bs) >= len(as) {
		diffList(path, as, bs, ops)
		return
	}
	if !reflect.DeepEqual(a, b) {
		*ops = append(*ops, Op{Op: "replace", Path: path, Value: b})
	}
}

// diffList diffs lists where after has k >= 0 more elements than before,
// inserted either at the front or at the end (whichever lines up more of the
// same elements); the elements that line up are diffed one by one.
func diffList(path string, as, bs []any, ops *[]Op) {
	k := len(bs) - len(as)
	matches := func(off int) int {
		n := 0
		for i := range as {
			if sameElement(as[i], bs[off+i]) {
				n++
			}
		}
		return n
	}
	if k > 0 && matches(k) > matches(0) {
		for i := range k {
			*ops = append(*ops, Op{Op: "add", Path: path + "/" + strconv.Itoa(i), Value: bs[i]})
		}
		for i := range as {
			diff(path+"/"+strconv.Itoa(k+i), as[i], bs[k+i], ops)
		}
		return
	}
	for i := range as {
		diff(path+"/"+strconv.Itoa(i), as[i], bs[i], ops)
	}
	for _, v := range bs[len(as):] {
		*ops = append(*ops, Op{Op: "add", Path: path + "/-", Value: v})
	}
}

// sameElement reports whether two list elements are the same item: equal,
// or objects with the same "name" (containers, volumes, env vars).
func sameElement(x, y any) bool {
	xm, xok := x.(map[string]any)
	ym, yok := y.(map[string]any)
	if xok && yok {
		xn, _ := xm["name"].(string)
		yn, _ := ym["name"].(string)
		if xn != "" && xn == yn {
			return true
		}
	}
	return reflect.DeepEqual(x, y)
}

// Apply applies ops to doc (a generic JSON value, which it may modify) and
// returns the result.
func Apply(doc any, ops []Op) (any, error) {
	for _, op := range ops {
		var err error
		doc, err = applyOne(doc, op)
		if err != nil {
			return nil, fmt.Errorf("apply %s %s: %w", op.Op, op.Path, err)
		}
	}
	return doc, nil
}

func applyOne(doc any, op Op) (any, error) {
	if op.Path == "" {
		if op.Op == "remove" {
			return nil, errors.New("cannot remove the whole document")
		}
		return op.Value, nil
	}
	if !strings.HasPrefix(op.Path, "/") {
		return nil, errors.New("path must start with /")
	}
	tokens := strings.Split(op.Path[1:], "/")
	for i := range tokens {
		tokens[i] = unescape(tokens[i])
	}
	parent, err := walk(doc, tokens[:len(tokens)-1])
	if err != nil {
		return nil, err
	}
	last := tokens[len(tokens)-1]
	switch p := parent.(type) {
	case map[string]any:
		if _, ok := p[last]; !ok && op.Op != "add" {
			return nil, fmt.Errorf("no member %q", last)
		}
		if op.Op == "remove" {
			delete(p, last)
		} else {
			p[last] = op.Value
		}
		return doc, nil
	case []any:
		idx := len(p)
		if last != "-" {
			if idx, err = strconv.Atoi(last); err != nil || idx < 0 || idx > len(p) || (op.Op != "add" && idx == len(p)) {
				return nil, fmt.Errorf("bad index %q", last)
			}
		} else if op.Op != "add" {
			return nil, errors.New("'-' only names a new element")
		}
		var list []any
		switch op.Op {
		case "add":
			list = append(append(append([]any{}, p[:idx]...), op.Value), p[idx:]...)
		case "remove":
			list = append(append([]any{}, p[:idx]...), p[idx+1:]...)
		default:
			list = append([]any{}, p...)
			list[idx] = op.Value
		}
		// Lists are values inside their parent: write the new one back.
		if len(tokens) == 1 {
			return list, nil
		}
		return applyOne(doc, Op{Op: "replace", Path: "/" + joinTokens(tokens[:len(tokens)-1]), Value: list})
	default:
		return nil, fmt.Errorf("parent of %q is not an object or list", last)
	}
}

// walk follows tokens from doc.
func walk(doc any, tokens []string) (any, error) {
	cur := doc
	for _, t := range tokens {
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[t]
			if !ok {
				return nil, fmt.Errorf("no member %q", t)
			}
			cur = v
		case []any:
			i, err := strconv.Atoi(t)
			if err != nil || i < 0 || i >= len(c) {
				return nil, fmt.Errorf("bad index %q", t)
			}
			cur = c[i]
		default:
			return nil, fmt.Errorf("cannot descend into %q", t)
		}
	}
	return cur, nil
}

func joinTokens(tokens []string) string {
	out := make([]string, len(tokens))
	for i, t := range tokens {
		out[i] = escape(t)
	}
	return strings.Join(out, "/")
}

func escape(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1") }
func unescape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~1", "/"), "~0", "~")
}

func sortedKeys(m map[string]any) []string {
	return slices.Sorted(maps.Keys(m))
}

// decodeJSONValue decodes JSON into generic values, keeping numbers exact.
func decodeJSONValue(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("decode JSON: %w", err)
	}
	return v, nil
}
