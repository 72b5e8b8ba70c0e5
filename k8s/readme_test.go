package k8s

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestREADMEDocumentsAnnotations checks that README.md's annotation table
// has a row for every exported Annotation* constant of annotations.go
// (AnnotationStatus, which the injector writes, is described below it).
func TestREADMEDocumentsAnnotations(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	f, err := parser.ParseFile(token.NewFileSet(), "annotations.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || len(vs.Names) != 1 || len(vs.Values) != 1 || !strings.HasPrefix(vs.Names[0].Name, "Annotation") {
			return true
		}
		lit, ok := vs.Values[0].(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			return true
		}
		key, _ := strconv.Unquote(lit.Value)
		found++
		row := "| `" + key + "` |"
		if key == AnnotationStatus {
			row = "`" + key + ": injected`"
		}
		if !strings.Contains(string(readme), row) {
			t.Errorf("README.md does not document %s (%s): want %q", vs.Names[0].Name, key, row)
		}
		return true
	})
	if found < 9 {
		t.Fatalf("found %d Annotation constants in annotations.go, want at least 9", found)
	}
}
