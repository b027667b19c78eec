package readmecheck

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const md = "# T\n\nText `errors.Is(err, safedial.ErrInvalidConfig)` and `d.Stats()`.\n\n```go\nc, err := d.Dial(\"tcp\", \"h:1\")\n```\n\n```\nnot go\n```\n\n````go\nvar x = pgxpool.Config{}\n````\n"

func TestExtract(t *testing.T) {
	want := []Fragment{
		{File: "R.md", Line: 3, Code: "errors.Is(err, safedial.ErrInvalidConfig)", Expr: true},
		{File: "R.md", Line: 6, Code: "c, err := d.Dial(\"tcp\", \"h:1\")\n"},
		{File: "R.md", Line: 14, Code: "var x = pgxpool.Config{}\n"},
	}
	if diff := cmp.Diff(want, Extract("R.md", []byte(md))); diff != "" {
		t.Errorf("fragments (-want +got):\n%s", diff)
	}
}

func TestUses(t *testing.T) {
	for _, tc := range []struct {
		code           string
		known, unknown []string
		module         string
	}{
		{"c, err := d.Dial(\"tcp\", \"h:1\")\nc.Close()\n", nil, nil, ""},
		{"var x = pgxpool.Config{}\nx.MaxConns = 1\n", []string{"pgxpool"}, nil, Clients},
		{"f := func(e *safedial.ExhaustedError) { log.Print(e.Syscall, foo.Bar) }\n_ = f\n", []string{"log", "safedial"}, []string{"foo"}, ""},
		{"prometheus.MustRegister(safedialprom.NewCollector(d))\n", []string{"prometheus", "safedialprom"}, nil, Prometheus},
	} {
		f := Fragment{File: "R.md", Line: 1, Code: tc.code}
		known, unknown, err := f.Uses()
		if err != nil {
			t.Fatal(err)
		}
		mod, _ := f.Module()
		if !cmp.Equal(tc.known, known) || !cmp.Equal(tc.unknown, unknown) || mod != tc.module {
			t.Errorf("%q: uses %v, unknown %v, module %q; want %v, %v, %q", tc.code, known, unknown, mod, tc.known, tc.unknown, tc.module)
		}
	}
}

func TestTwoModules(t *testing.T) {
	f := Fragment{File: "R.md", Line: 1, Code: "_ = redis.Options{}\n_ = prometheus.Labels{}\n"}
	if _, err := f.Module(); err == nil {
		t.Error("a fragment naming packages of two nested modules has a module")
	}
}

// TestSource: each fragment is a function with a //line directive back to the
// Markdown file, its top-level variables used, and exactly the imports named.
func TestSource(t *testing.T) {
	src, err := Source(Extract("R.md", []byte(md))[:2])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\"errors\"\n", "\"github.com/safedial/safedial\"\n", "R.md:3\n", "R.md:6\n", "_ = c\n", "_ = err\n"} {
		if !strings.Contains(string(src), want) {
			t.Errorf("source lacks %q:\n%s", want, src)
		}
	}
	if strings.Contains(string(src), "pgx") {
		t.Errorf("source imports what it does not use:\n%s", src)
	}
}

func TestGofmt(t *testing.T) {
	ok, _, err := Fragment{Code: "x := 1\nif x > 0 {\n\tx++\n}\n"}.Gofmt()
	if !ok || err != nil {
		t.Errorf("formatted fragment: %v, %v", ok, err)
	}
	ok, got, err := Fragment{Code: "x:=1\nif x>0 {\nx++\n}\n"}.Gofmt()
	if want := "x := 1\nif x > 0 {\n\tx++\n}\n"; ok || err != nil || got != want {
		t.Errorf("unformatted fragment: %v, %q, %v; want false, %q", ok, got, err, want)
	}
}
