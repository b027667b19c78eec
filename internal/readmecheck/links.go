package readmecheck

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"unicode"
)

// A Link is a relative link of a Markdown page: [text](Target), where Target
// is a path relative to the page's directory, a "#fragment", or both.
type Link struct {
	File   string // the page
	Line   int
	Target string
}

func (l Link) String() string { return fmt.Sprintf("%s:%d: %s", l.File, l.Line, l.Target) }

var (
	mdLink  = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	scheme  = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)
	heading = regexp.MustCompile(`^#{1,6}\s+(.*?)\s*#*\s*$`)
	inlined = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)
	htmlID  = regexp.MustCompile(`<a\s+(?:name|id)="([^"]+)"`)
)

// Links returns the relative links of the Markdown text md, read from file,
// outside fenced blocks and code spans. Links with a scheme (https:, mailto:)
// are left out.
func Links(file string, md []byte) []Link {
	var out []Link
	fence := ""
	for i, line := range strings.Split(string(md), "\n") {
		trimmed := strings.TrimSpace(line)
		if fence == "" && strings.HasPrefix(trimmed, "```") {
			fence = trimmed[:len(trimmed)-len(strings.TrimLeft(trimmed, "`"))]
			continue
		}
		if fence != "" {
			if strings.HasPrefix(trimmed, fence) && strings.Trim(trimmed, "`") == "" {
				fence = ""
			}
			continue
		}
		for _, m := range mdLink.FindAllStringSubmatch(inlineCode.ReplaceAllString(line, ""), -1) {
			if !scheme.MatchString(m[1]) {
				out = append(out, Link{File: file, Line: i + 1, Target: m[1]})
			}
		}
	}
	return out
}

// Anchors returns the fragments GitHub gives the headings of md (lower case,
// punctuation dropped, spaces as hyphens, "-1", "-2" for repeats) and the
// names of its <a name> and <a id> tags.
func Anchors(md []byte) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	fence := ""
	for _, line := range strings.Split(string(md), "\n") {
		trimmed := strings.TrimSpace(line)
		if fence == "" && strings.HasPrefix(trimmed, "```") {
			fence = trimmed[:len(trimmed)-len(strings.TrimLeft(trimmed, "`"))]
			continue
		}
		if fence != "" {
			if strings.HasPrefix(trimmed, fence) && strings.Trim(trimmed, "`") == "" {
				fence = ""
			}
			continue
		}
		for _, m := range htmlID.FindAllStringSubmatch(line, -1) {
			out[m[1]] = true
		}
		m := heading.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		text := inlined.ReplaceAllString(m[1], "$1")
		var b strings.Builder
		for _, r := range strings.ToLower(text) {
			switch {
			case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
				b.WriteRune(r)
			case r == ' ':
				b.WriteByte('-')
			}
		}
		slug := b.String()
		if n := seen[slug]; n > 0 {
			out[fmt.Sprintf("%s-%d", slug, n)] = true
		} else {
			out[slug] = true
		}
		seen[slug]++
	}
	return out
}

// CheckLinks checks every relative link of the pages: the file it names
// exists (relative to the page), and a fragment names an anchor of the
// Markdown page it points at. It returns one error per broken link.
func CheckLinks(pages []string) ([]error, error) {
	var errs []error
	anchors := map[string]map[string]bool{}
	for _, page := range pages {
		md, err := os.ReadFile(page)
		if err != nil {
			return nil, err
		}
		for _, l := range Links(page, md) {
			path, frag, _ := strings.Cut(l.Target, "#")
			target := page
			if path != "" {
				target = filepath.Join(filepath.Dir(page), filepath.FromSlash(path))
			}
			if _, err := os.Stat(target); err != nil {
				errs = append(errs, fmt.Errorf("%v: no such file %s", l, target))
				continue
			}
			if frag == "" || !strings.HasSuffix(target, ".md") {
				continue
			}
			if anchors[target] == nil {
				md, err := os.ReadFile(target)
				if err != nil {
					return nil, err
				}
				anchors[target] = Anchors(md)
			}
			if !anchors[target][frag] {
				errs = append(errs, fmt.Errorf("%v: %s has no heading or anchor #%s", l, target, frag))
			}
		}
	}
	return errs, nil
}
