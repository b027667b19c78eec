package safedial_test

import (
	"go/ast"
	"go/doc"
	"go/parser"
	"go/token"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestExamplesShown: every example of the package is attached by go/doc,
// which pkg.go.dev uses, to an identifier it shows: the package, a function,
// a type or a method. An example named after a field (ExampleDialer_Sources)
// or anything else go/doc does not know is dropped silently, and nobody sees
// it; name it after the type with a lower-case suffix (ExampleDialer_sources).
func TestExamplesShown(t *testing.T) {
	for _, dir := range []string{".", "prometheus"} {
		t.Run(dir, func(t *testing.T) {
			fset := token.NewFileSet()
			paths, err := filepath.Glob(filepath.Join(dir, "*.go"))
			if err != nil {
				t.Fatal(err)
			}
			var files []*ast.File
			var all []string
			for _, p := range paths {
				f, err := parser.ParseFile(fset, p, nil, parser.ParseComments)
				if err != nil {
					t.Fatal(err)
				}
				if strings.HasSuffix(p, "_test.go") {
					for _, d := range f.Decls {
						if fd, ok := d.(*ast.FuncDecl); ok && fd.Recv == nil && strings.HasPrefix(fd.Name.Name, "Example") {
							all = append(all, fd.Name.Name)
						}
					}
				}
				files = append(files, f)
			}
			pkg, err := doc.NewFromFiles(fset, files, "example.com/"+dir)
			if err != nil {
				t.Fatal(err)
			}
			shown := map[string]bool{}
			add := func(exs []*doc.Example) {
				for _, e := range exs {
					shown["Example"+e.Name] = true
				}
			}
			add(pkg.Examples)
			for _, f := range pkg.Funcs {
				add(f.Examples)
			}
			for _, typ := range pkg.Types {
				add(typ.Examples)
				for _, f := range typ.Funcs {
					add(f.Examples)
				}
				for _, m := range typ.Methods {
					add(m.Examples)
				}
			}
			var hidden []string
			for _, name := range all {
				if !shown[name] {
					hidden = append(hidden, name)
				}
			}
			sort.Strings(hidden)
			if len(all) == 0 || len(hidden) > 0 {
				t.Errorf("%d examples, not shown by go doc or pkg.go.dev: %v (name each after a function, type or method; a field takes a lower-case suffix on its type)", len(all), hidden)
			}
		})
	}
}
