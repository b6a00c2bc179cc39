package main

// The links' test: every link of the Markdown files reaches a file of the
// repository and an anchor it has (TestDocsLinks), and the anchor rule it
// follows, GitHub's (TestDocsSlug).

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

var (
	inlineLink = regexp.MustCompile(`!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:"[^"]*"|'[^']*'|\([^)]*\)))?\s*\)`)
	refDef     = regexp.MustCompile(`^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)`)
	autoLink   = regexp.MustCompile(`<([a-zA-Z][a-zA-Z0-9+.-]{1,31}:[^\s<>]*)>`)
	htmlLink   = regexp.MustCompile(`(?i)\b(?:href|src)\s*=\s*"([^"]*)"`)
	atxHeading = regexp.MustCompile(`^ {0,3}#{1,6}(?:\s+(.*?))?(?:\s+#+)?\s*$`)
	htmlAnchor = regexp.MustCompile(`(?i)<a\s[^>]*\b(?:id|name)\s*=\s*"([^"]+)"`)
)

// links returns every link target in md's prose, with its line.
func links(md string) []mdLine {
	var out []mdLine
	for _, l := range proseLines(md) {
		for _, re := range []*regexp.Regexp{inlineLink, refDef, autoLink, htmlLink} {
			for _, m := range re.FindAllStringSubmatch(l.text, -1) {
				out = append(out, mdLine{l.n, strings.Trim(m[1], "<>")})
			}
		}
	}
	return out
}

// slug is the anchor a heading gets where the repository is rendered
// (GitHub's rule): the heading's text, lower case, without punctuation,
// spaces as hyphens.
func slug(heading string) string {
	heading = inlineLink.ReplaceAllStringFunc(heading, func(s string) string { // [text](url) -> text
		return s[strings.IndexByte(s, '[')+1 : strings.LastIndex(s, "](")]
	})
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_' || r == '-':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// anchors returns the anchors of a Markdown file: its headings' slugs (a
// repeated one numbered as GitHub does) and explicit <a id=…> or name=.
func anchors(md string) map[string]bool {
	set := map[string]bool{}
	seen := map[string]int{}
	for _, l := range strings.Split(md, "\n") {
		for _, m := range htmlAnchor.FindAllStringSubmatch(l, -1) {
			set[m[1]] = true
		}
	}
	open := ""
	for _, l := range strings.Split(md, "\n") {
		if m := fence.FindStringSubmatch(l); m != nil {
			if open == "" {
				open = m[1]
			} else if m[1][0] == open[0] && len(m[1]) >= len(open) {
				open = ""
			}
			continue
		}
		if open != "" {
			continue
		}
		m := atxHeading.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		s := slug(m[1])
		if n := seen[s]; n > 0 {
			set[s+"-"+strconv.Itoa(n)] = true
		} else {
			set[s] = true
		}
		seen[s]++
	}
	return set
}

// exampleHost reports whether a web address's host is one that cannot be
// somebody's site: loopback, or the names reserved for examples (RFC 2606).
func exampleHost(host string) bool {
	host = strings.ToLower(host)
	if host == "localhost" || strings.HasPrefix(host, "127.") || host == "::1" {
		return true
	}
	for _, d := range []string{"example", "example.com", "example.org", "example.net"} {
		if host == d || strings.HasSuffix(host, "."+d) {
			return true
		}
	}
	return false
}

// TestDocsLinks: every link in the Markdown files reaches a file of the
// repository (and a #anchor a heading of it), and none leaves the repository.
func TestDocsLinks(t *testing.T) {
	root, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	anchorsOf := map[string]map[string]bool{}
	anchorSet := func(path string) map[string]bool {
		if a, ok := anchorsOf[path]; ok {
			return a
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		anchorsOf[path] = anchors(string(b))
		return anchorsOf[path]
	}
	checked := 0
	for _, file := range docFiles(t) {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, forbidden := range []string{"SPEC.md", "/work/"} {
			if strings.Contains(string(b), forbidden) {
				t.Errorf("%s names %q: the documentation stands on its own, in the repository", file, forbidden)
			}
		}
		for _, l := range links(string(b)) {
			checked++
			at := fmt.Sprintf("%s:%d: link %q", file, l.n, l.text)
			target := l.text
			if u, err := url.Parse(target); err == nil && u.Scheme != "" {
				if (u.Scheme != "http" && u.Scheme != "https") || !exampleHost(u.Hostname()) {
					t.Errorf("%s leaves the repository; link to a file in it instead", at)
				}
				continue
			}
			path, frag, _ := strings.Cut(target, "#")
			if strings.HasPrefix(path, "/") {
				t.Errorf("%s: use a path relative to the file", at)
				continue
			}
			if p, err := url.PathUnescape(path); err == nil {
				path = p
			}
			abs := file // "#anchor" alone: this file
			if path != "" {
				abs = filepath.Join(filepath.Dir(file), path)
			}
			rel, err := filepath.Rel(root, filepath.Join(root, abs))
			if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
				t.Errorf("%s climbs out of the repository", at)
				continue
			}
			if slices.Contains(strings.Split(filepath.ToSlash(rel), "/"), "shared") {
				t.Errorf("%s points to shared/, outside the repository", at)
				continue
			}
			fi, err := os.Stat(abs)
			if err != nil {
				t.Errorf("%s: no such file: %s", at, rel)
				continue
			}
			if frag == "" {
				continue
			}
			if fi.IsDir() || !strings.HasSuffix(abs, ".md") {
				continue // anchors in other files (source lines) are not checked
			}
			if !anchorSet(abs)[frag] {
				t.Errorf("%s: no heading or anchor #%s in %s", at, frag, rel)
			}
		}
	}
	if checked < 40 {
		t.Errorf("checked only %d links: is the link parser broken?", checked)
	}
}

// TestDocsSlug pins the anchor rule the link test relies on.
func TestDocsSlug(t *testing.T) {
	for in, want := range map[string]string{
		"ssebridge's side":                            "ssebridges-side",
		"Why not r3labs/sse's server":                 "why-not-r3labssses-server",
		"The backend's side (Django, in a few lines)": "the-backends-side-django-in-a-few-lines",
		"`GET /events` and [links](x.md)":             "get-events-and-links",
		"Ids and resets":                              "ids-and-resets",
	} {
		if got := slug(in); got != want {
			t.Errorf("slug(%q) = %q, want %q", in, got, want)
		}
	}
	md := "# A\n```\n# not a heading\n```\n## A\n<a id=\"x\"></a>\n"
	got := anchors(md)
	for _, want := range []string{"a", "a-1", "x"} {
		if !got[want] {
			t.Errorf("anchors of %q lack %q: %v", md, want, got)
		}
	}
	if got["not-a-heading"] {
		t.Errorf("a line in a code block was taken as a heading")
	}
	ls := links("[a](b.md) `[c](d.md)` <http://localhost:8080/>\n```\n[e](f.md)\n```\n[g]: h.md\n")
	var targets []string
	for _, l := range ls {
		targets = append(targets, l.text)
	}
	if want := []string{"b.md", "http://localhost:8080/", "h.md"}; !slices.Equal(targets, want) {
		t.Errorf("links = %q, want %q", targets, want)
	}
}
