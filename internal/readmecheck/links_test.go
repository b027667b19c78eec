package readmecheck

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestAnchors(t *testing.T) {
	md := "# Source pools\n\n## What a probe costs\n\n## `Stats` and [errors](e.md)\n\n```\n# not a heading\n```\n\n## What a probe costs\n\n<a name=\"old\"></a>\n## Über, 2.5x faster!\n"
	var got []string
	for a := range Anchors([]byte(md)) {
		got = append(got, a)
	}
	sort.Strings(got)
	want := []string{"old", "source-pools", "stats-and-errors", "what-a-probe-costs", "what-a-probe-costs-1", "über-25x-faster"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("anchors (-want +got):\n%s", diff)
	}
}

func TestCheckLinks(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("docs/pools.md", "# Source pools\n\n## Churn\n")
	write("LICENSE", "BSD\n")
	readme := write("README.md", "# T\n\n[pools](docs/pools.md), [churn](docs/pools.md#churn), [licence](LICENSE), [me](#t), [web](https://example.com/x#y)\n\n"+
		"[gone](docs/gone.md) and [bad anchor](docs/pools.md#no-such) and [own](#nope)\n\n`[code](not/a/link.md)`\n\n```\n[block](nor/this.md)\n```\n")
	back := write("docs/back.md", "[up](../README.md#t) [wrong](README.md)\n")
	errs, err := CheckLinks([]string{readme, back})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range errs {
		got = append(got, strings.ReplaceAll(e.Error(), dir+string(filepath.Separator), ""))
	}
	want := []string{
		"README.md:5: docs/gone.md: no such file docs/gone.md",
		"README.md:5: docs/pools.md#no-such: docs/pools.md has no heading or anchor #no-such",
		"README.md:5: #nope: README.md has no heading or anchor #nope",
		"docs/back.md:1: README.md: no such file docs/README.md",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("broken links (-want +got):\n%s", diff)
	}
}
