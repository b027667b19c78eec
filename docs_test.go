package safedial_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/safedial/safedial/internal/readmecheck"
)

// pendingPages are pages a link may name before they exist: another branch
// brings them. Once a page exists, links to it are checked as any other.
var pendingPages = map[string]string{}

// TestDocLinks: every relative link of the documentation (README.md,
// CONTRIBUTING.md, RELEASING.md, CHANGELOG.md, docs/*.md,
// prometheus/README.md) names a file that exists, and a fragment names a
// heading or anchor of the page it points at, as GitHub spells them.
func TestDocLinks(t *testing.T) {
	pages, err := readmecheck.Pages(".")
	if err != nil {
		t.Fatal(err)
	}
	pages = append(pages, "RELEASING.md", "CHANGELOG.md")
	errs, err := readmecheck.CheckLinks(pages)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range errs {
		if p, why, ok := pending(e.Error()); ok {
			t.Logf("%v (%s: %s)", e, p, why)
			continue
		}
		t.Error(e)
	}
}

func pending(msg string) (page, why string, ok bool) {
	for p, why := range pendingPages {
		if _, err := os.Stat(p); err != nil && strings.HasSuffix(msg, "no such file "+filepath.FromSlash(p)) {
			return p, why, true
		}
	}
	return "", "", false
}

// TestREADMECommands: the README shows the demonstration and the test
// command a newcomer runs from a fresh clone, the test command is the one
// .ci/run runs, and the README stays at most 2,500 words.
func TestREADMECommands(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	ci, err := os.ReadFile(".ci/run")
	if err != nil {
		t.Fatal(err)
	}
	const (
		demo  = "go run ./examples/exhaustion"
		tests = "go test -race -count=1 ./... ./prometheus/... ./cmd/safedial/..."
	)
	for _, cmd := range []string{demo, tests} {
		if !strings.Contains(string(readme), "```\n"+cmd+"\n```") {
			t.Errorf("README.md does not show %q in a block of its own", cmd)
		}
	}
	if !strings.Contains(string(ci), "\n"+tests+"\n") {
		t.Errorf(".ci/run does not run the README's test command %q", tests)
	}
	if n := len(strings.Fields(string(readme))); n > 2500 {
		t.Errorf("README.md has %d words (wc -w), want at most 2,500", n)
	}
}

// TestDocNames: a code span of the documentation that names a field or
// method of one of the package's types (`SourceStats.Attempts`,
// `Dialer.Headroom`) names one that exists, so a renamed field cannot
// survive in the prose (prometheus/README.md said `SourceStats.Dials` after
// the field became Attempts).
func TestDocNames(t *testing.T) {
	fset := token.NewFileSet()
	paths, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	members := map[string]map[string]bool{} // type name -> field and method names
	add := func(typ, name string) {
		if members[typ] == nil {
			members[typ] = map[string]bool{}
		}
		members[typ][name] = true
	}
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			switch d := decl.(type) {
			case *ast.GenDecl:
				for _, s := range d.Specs {
					ts, ok := s.(*ast.TypeSpec)
					if !ok || !ts.Name.IsExported() {
						continue
					}
					add(ts.Name.Name, "")
					if st, ok := ts.Type.(*ast.StructType); ok {
						for _, fl := range st.Fields.List {
							for _, n := range fl.Names {
								add(ts.Name.Name, n.Name)
							}
						}
					}
				}
			case *ast.FuncDecl:
				if d.Recv != nil && len(d.Recv.List) == 1 {
					typ := d.Recv.List[0].Type
					if s, ok := typ.(*ast.StarExpr); ok {
						typ = s.X
					}
					if id, ok := typ.(*ast.Ident); ok {
						add(id.Name, d.Name.Name)
					}
				}
			}
		}
	}
	pages, err := readmecheck.Pages(".")
	if err != nil {
		t.Fatal(err)
	}
	span := regexp.MustCompile("`(?:safedial\\.)?([A-Z][A-Za-z0-9]*)\\.([A-Z][A-Za-z0-9]*)(?:\\(\\))?`")
	checked := 0
	for _, page := range append(pages, "RELEASING.md") {
		md, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(md), "\n") {
			for _, m := range span.FindAllStringSubmatch(line, -1) {
				if members[m[1]] == nil {
					continue // not one of the package's types
				}
				checked++
				if !members[m[1]][m[2]] {
					t.Errorf("%s:%d: %s: %s has no field or method %s", page, i+1, m[0], m[1], m[2])
				}
			}
		}
	}
	if checked == 0 {
		t.Error("no code span names a field or method of the package's types: the pattern is broken")
	}
	t.Logf("%d names checked", checked)
}
