// Package readmecheck compiles the Go snippets of a Markdown file against the
// current API, so that the README cannot drift from the code it documents.
//
// The convention, for README.md:
//
//   - Every fenced block whose info string is "go" is a fragment: the
//     statements of a function body. Each is compiled as the body of a
//     function of its own, in a scratch package whose imports are the
//     packages the fragment names (see Packages; a package the table does not
//     know is an error), and where every variable the fragment declares at its
//     top level counts as used.
//   - Fragments may use, without declaring them, the names of the prelude:
//     ctx (a context.Context), d (a *safedial.Dialer), err (an error) and ee
//     (a *safedial.ExhaustedError). A fragment that declares its own d or err
//     uses its own.
//   - An inline code span that begins with "errors.Is(" or "errors.As(" is
//     compiled as an expression in the same way (the errors table).
//
// Compiler and vet messages point at the README's own lines. Block fragments
// must also be formatted as gofmt formats them (see Gofmt).
//
// Fragments that name a client library (pgx, go-redis, x/net/proxy, gRPC,
// Prometheus) cannot be compiled in the root module, which must not depend
// on them: the root module's test compiles the others and checks that each
// of these belongs to a nested module that exists, and that module's test
// (examples/clients, which has those dependencies) compiles them.
package readmecheck

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/format"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// A Fragment is Go source taken from a Markdown file.
type Fragment struct {
	File string // the Markdown file
	Line int    // line of the fragment's first line in File
	Code string
	Expr bool // an inline expression rather than a block of statements
}

func (f Fragment) String() string { return fmt.Sprintf("%s:%d", f.File, f.Line) }

// A Package is a package that fragments may name: its import path, and the
// module that has it as a dependency: "" for the root module (the standard
// library and safedial), or a nested module's directory, relative to the
// root, for packages the root module must not depend on.
type Package struct {
	Path, Module string
}

// Packages maps the package names that fragments may use to their packages.
// A fragment that names a package of a nested module is compiled by that
// module's tests (examples/clients/readme_test.go shows how), not the root's.
var Packages = map[string]Package{
	"context":  {"context", ""},
	"errors":   {"errors", ""},
	"expvar":   {"expvar", ""},
	"fmt":      {"fmt", ""},
	"io":       {"io", ""},
	"log":      {"log", ""},
	"net":      {"net", ""},
	"http":     {"net/http", ""},
	"httputil": {"net/http/httputil", ""},
	"url":      {"net/url", ""},
	"netip":    {"net/netip", ""},
	"os":       {"os", ""},
	"strings":  {"strings", ""},
	"sync":     {"sync", ""},
	"atomic":   {"sync/atomic", ""},
	"time":     {"time", ""},
	"safedial": {"github.com/safedial/safedial", ""},

	"pgx":      {"github.com/jackc/pgx/v5", Clients},
	"pgconn":   {"github.com/jackc/pgx/v5/pgconn", Clients},
	"pgxpool":  {"github.com/jackc/pgx/v5/pgxpool", Clients},
	"redis":    {"github.com/redis/go-redis/v9", Clients},
	"proxy":    {"golang.org/x/net/proxy", Clients},
	"grpc":     {"google.golang.org/grpc", Clients},
	"insecure": {"google.golang.org/grpc/credentials/insecure", Clients},

	"prometheus":   {"github.com/prometheus/client_golang/prometheus", Prometheus},
	"promhttp":     {"github.com/prometheus/client_golang/prometheus/promhttp", Prometheus},
	"safedialprom": {"github.com/safedial/safedial/prometheus", Prometheus},
}

// The nested modules that compile fragments.
const (
	Clients    = "examples/clients"
	Prometheus = "prometheus"
)

var inlineCode = regexp.MustCompile("`([^`]+)`")

// Pages returns the Markdown pages of the repository at root whose snippets
// and tables the tests check: README.md, CONTRIBUTING.md, every docs/*.md
// and prometheus/README.md, those that exist, as paths joined to root.
func Pages(root string) ([]string, error) {
	var pages []string
	for _, p := range []string{"README.md", "CONTRIBUTING.md", "prometheus/README.md"} {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			pages = append(pages, filepath.Join(root, p))
		}
	}
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		return nil, err
	}
	if len(pages) == 0 {
		return nil, fmt.Errorf("readmecheck: no README.md under %s", root)
	}
	return append(pages, docs...), nil
}

// ExtractPages returns the fragments of every page of [Pages](root).
func ExtractPages(root string) ([]Fragment, error) {
	pages, err := Pages(root)
	if err != nil {
		return nil, err
	}
	var out []Fragment
	for _, p := range pages {
		md, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		out = append(out, Extract(p, md)...)
	}
	return out, nil
}

// Extract returns the fragments of the Markdown text md, read from file.
func Extract(file string, md []byte) []Fragment {
	var (
		out   []Fragment
		fence string // the open fence, "" outside a block
		isGo  bool
		start int
		code  strings.Builder
	)
	for i, line := range strings.Split(string(md), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case fence == "" && strings.HasPrefix(trimmed, "```"):
			fence = trimmed[:len(trimmed)-len(strings.TrimLeft(trimmed, "`"))]
			isGo = strings.TrimSpace(strings.TrimPrefix(trimmed, fence)) == "go"
			start = i + 2
			code.Reset()
		case fence != "" && strings.HasPrefix(trimmed, fence) && strings.Trim(trimmed, "`") == "":
			if isGo {
				out = append(out, Fragment{File: file, Line: start, Code: code.String()})
			}
			fence = ""
		case fence != "":
			code.WriteString(line)
			code.WriteByte('\n')
		default:
			for _, m := range inlineCode.FindAllStringSubmatch(line, -1) {
				if strings.HasPrefix(m[1], "errors.Is(") || strings.HasPrefix(m[1], "errors.As(") {
					out = append(out, Fragment{File: file, Line: i + 1, Code: m[1], Expr: true})
				}
			}
		}
	}
	return out
}

// Uses returns the package names of Packages that f names, sorted, and the
// names it uses as packages that Packages does not know.
func (f Fragment) Uses() (known, unknown []string, err error) {
	file, _, err := f.parse()
	if err != nil {
		return nil, nil, err
	}
	seen := declared(file)
	for n := range prelude {
		seen[n] = true
	}
	ast.Inspect(file, func(n ast.Node) bool {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		id, ok := sel.X.(*ast.Ident)
		if !ok || seen[id.Name] {
			return true
		}
		seen[id.Name] = true
		if _, ok := Packages[id.Name]; ok {
			known = append(known, id.Name)
		} else {
			unknown = append(unknown, id.Name)
		}
		return true
	})
	slices.Sort(known)
	slices.Sort(unknown)
	return known, unknown, nil
}

// Module returns the module that compiles f: "" for the root module, or the
// directory of the nested module whose packages it names. A fragment that
// names packages of two nested modules is an error.
func (f Fragment) Module() (string, error) {
	known, _, err := f.Uses()
	if err != nil {
		return "", err
	}
	mod := ""
	for _, k := range known {
		m := Packages[k].Module
		if m == "" || m == mod {
			continue
		}
		if mod != "" {
			return "", fmt.Errorf("%v: names packages of two modules, %s and %s", f, mod, m)
		}
		mod = m
	}
	return mod, nil
}

// Gofmt reports whether a block fragment is formatted as gofmt formats it
// (as the body of a function), and returns gofmt's version if not.
func (f Fragment) Gofmt() (ok bool, formatted string, err error) {
	if f.Expr {
		return true, f.Code, nil
	}
	var b strings.Builder
	b.WriteString("package p\n\nfunc _() {\n")
	for _, l := range strings.Split(strings.TrimRight(f.Code, "\n"), "\n") {
		if l != "" {
			b.WriteString("\t")
		}
		b.WriteString(l + "\n")
	}
	b.WriteString("}\n")
	out, err := format.Source([]byte(b.String()))
	if err != nil {
		return false, "", fmt.Errorf("%v: %v", f, err)
	}
	if string(out) == b.String() {
		return true, f.Code, nil
	}
	body := strings.TrimSuffix(strings.TrimPrefix(string(out), "package p\n\nfunc _() {\n"), "}\n")
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(body, "\n"), "\n") {
		lines = append(lines, strings.TrimPrefix(l, "\t"))
	}
	return false, strings.Join(lines, "\n") + "\n", nil
}

// declared returns every name a variable or parameter of file is declared
// with, at any depth.
func declared(file *ast.File) map[string]bool {
	names := map[string]bool{}
	add := func(es ...ast.Expr) {
		for _, e := range es {
			if id, ok := e.(*ast.Ident); ok {
				names[id.Name] = true
			}
		}
	}
	ast.Inspect(file, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.AssignStmt:
			if n.Tok == token.DEFINE {
				add(n.Lhs...)
			}
		case *ast.RangeStmt:
			if n.Tok == token.DEFINE {
				add(n.Key, n.Value)
			}
		case *ast.ValueSpec:
			for _, id := range n.Names {
				add(id)
			}
		case *ast.Field:
			for _, id := range n.Names {
				add(id)
			}
		}
		return true
	})
	return names
}

// prelude names what fragments may use without declaring it.
var prelude = map[string]bool{"ctx": true, "d": true, "err": true, "ee": true}

const preludeSrc = `package readme

import (
	"context"

	"github.com/safedial/safedial"
)

// The names README fragments may use without declaring them.
var (
	ctx context.Context = context.Background()
	d                   = &safedial.Dialer{}
	err error
	ee  *safedial.ExhaustedError
)
`

// parse parses f as the body of a function, and returns the file and the
// names the body declares at its top level.
func (f Fragment) parse() (*ast.File, []string, error) {
	body := f.Code
	if f.Expr {
		body = "_ = " + body + "\n"
	}
	src := "package readme\n\nfunc _() {\n" + body + "}\n"
	file, err := parser.ParseFile(token.NewFileSet(), f.File, src, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("%v: not a function body: %v", f, err)
	}
	var names []string
	for _, st := range file.Decls[0].(*ast.FuncDecl).Body.List {
		switch st := st.(type) {
		case *ast.AssignStmt:
			if st.Tok == token.DEFINE {
				for _, e := range st.Lhs {
					if id, ok := e.(*ast.Ident); ok && id.Name != "_" {
						names = append(names, id.Name)
					}
				}
			}
		case *ast.DeclStmt:
			if g, ok := st.Decl.(*ast.GenDecl); ok && g.Tok == token.VAR {
				for _, s := range g.Specs {
					for _, id := range s.(*ast.ValueSpec).Names {
						if id.Name != "_" {
							names = append(names, id.Name)
						}
					}
				}
			}
		}
	}
	return file, names, nil
}

// Source returns the scratch package's file for frags: one function per
// fragment, with //line directives back to the Markdown file.
func Source(frags []Fragment) ([]byte, error) {
	imports := map[string]bool{}
	var funcs bytes.Buffer
	for i, f := range frags {
		known, unknown, err := f.Uses()
		if err != nil {
			return nil, err
		}
		if len(unknown) > 0 {
			return nil, fmt.Errorf("%v: %v used as packages: declare them in the fragment, or add the packages to readmecheck.Packages", f, unknown)
		}
		for _, k := range known {
			imports[Packages[k].Path] = true
		}
		_, names, err := f.parse()
		if err != nil {
			return nil, err
		}
		abs, err := filepath.Abs(f.File)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&funcs, "\nfunc fragment%d() {\n//line %s:%d\n", i, abs, f.Line)
		if f.Expr {
			fmt.Fprintf(&funcs, "_ = %s\n", f.Code)
		} else {
			funcs.WriteString(f.Code)
		}
		for _, n := range names {
			fmt.Fprintf(&funcs, "_ = %s\n", n)
		}
		funcs.WriteString("}\n")
	}
	var b bytes.Buffer
	b.WriteString("// Code generated by readmecheck from README fragments. DO NOT EDIT.\n\npackage readme\n\nimport (\n")
	paths := make([]string, 0, len(imports))
	for p := range imports {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		fmt.Fprintf(&b, "\t%q\n", p)
	}
	b.WriteString(")\n")
	b.Write(funcs.Bytes())
	out, err := format.Source(b.Bytes())
	if err != nil {
		return nil, fmt.Errorf("generated source: %v\n%s", err, b.Bytes())
	}
	return out, nil
}

// Check compiles frags with go build and go vet in a scratch module that
// has the dependencies of the module in modDir (its go.mod's requirements,
// replacements made absolute, and its go.sum), with that module itself
// replaced by modDir. It needs the go command; modules come from the module
// cache or, where it lacks one, from GOPROXY.
func Check(modDir string, frags []Fragment) error {
	if len(frags) == 0 {
		return fmt.Errorf("no fragments to check")
	}
	modDir, err := filepath.Abs(modDir)
	if err != nil {
		return err
	}
	gomod, err := scratchGoMod(modDir)
	if err != nil {
		return err
	}
	src, err := Source(frags)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "readmecheck")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sum, err := os.ReadFile(filepath.Join(modDir, "go.sum"))
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	for name, b := range map[string][]byte{"go.mod": gomod, "go.sum": sum, "prelude.go": []byte(preludeSrc), "readme.go": src} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	for _, args := range [][]string{{"build", "./..."}, {"vet", "./..."}} {
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		// -mod=mod: a requirement the fragments need beyond modDir's own is
		// resolved rather than refused (from the module cache when it has it).
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s of the README's fragments: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// scratchGoMod returns the go.mod of the scratch module for modDir.
func scratchGoMod(modDir string) ([]byte, error) {
	cmd := exec.Command("go", "mod", "edit", "-json")
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go mod edit -json in %s: %v", modDir, err)
	}
	type mod struct{ Path, Version string }
	var m struct {
		Module  mod
		Go      string
		Require []mod
		Replace []struct{ Old, New mod }
	}
	if err := json.Unmarshal(out, &m); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "module readme\n\ngo %s\n\nrequire (\n\t%s v0.0.0-00010101000000-000000000000\n", m.Go, m.Module.Path)
	for _, r := range m.Require {
		fmt.Fprintf(&b, "\t%s %s\n", r.Path, r.Version)
	}
	fmt.Fprintf(&b, ")\n\nreplace %s => %s\n", m.Module.Path, modDir)
	for _, r := range m.Replace {
		old := r.Old.Path
		if r.Old.Version != "" {
			old += " " + r.Old.Version
		}
		repl := r.New.Path
		if r.New.Version != "" {
			repl += " " + r.New.Version
		} else if !filepath.IsAbs(repl) {
			repl = filepath.Join(modDir, repl)
		}
		fmt.Fprintf(&b, "replace %s => %s\n", old, repl)
	}
	return b.Bytes(), nil
}
