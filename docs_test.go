package main

// The documentation's own tests (docs/testing.md): links that resolve and
// stay inside the repository, a configuration table and a metrics table
// that match the code, and a Grafana dashboard and alert rules that name
// metrics that exist.

import (
	"context"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ssebridge/ssebridge/internal/redistest"
)

// docFiles lists the Markdown files the tests hold to their links: the
// root's, docs/'s and e2e/'s, and every one under clients/, examples/ and
// deploy/.
func docFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	for _, pattern := range []string{"*.md", "docs/*.md", "e2e/*.md"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	for _, dir := range []string{"clients", "examples", "deploy"} {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && path != dir && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "node_modules") {
				return filepath.SkipDir
			}
			if !d.IsDir() && strings.HasSuffix(path, ".md") {
				files = append(files, path)
			}
			return nil
		})
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	if len(files) < 5 {
		t.Fatalf("found only %d Markdown files: %v", len(files), files)
	}
	return files
}

// mdLine is one line of Markdown outside fenced code, with code spans blanked.
type mdLine struct {
	n    int // 1-based
	text string
}

var fence = regexp.MustCompile("^ {0,3}(```+|~~~+)")

// proseLines returns the lines of md outside fenced code blocks, with inline
// code spans removed: a link or a heading there is only text.
func proseLines(md string) []mdLine {
	var out []mdLine
	open := ""
	for i, l := range strings.Split(md, "\n") {
		if m := fence.FindStringSubmatch(l); m != nil {
			switch {
			case open == "":
				open = m[1]
			case m[1][0] == open[0] && len(m[1]) >= len(open) && strings.TrimSpace(l[strings.Index(l, m[1])+len(m[1]):]) == "":
				open = ""
			}
			continue
		}
		if open != "" {
			continue
		}
		out = append(out, mdLine{i + 1, stripCodeSpans(l)})
	}
	return out
}

// stripCodeSpans removes `code` spans (of any number of backticks) from a line.
func stripCodeSpans(l string) string {
	var b strings.Builder
	for {
		i := strings.IndexByte(l, '`')
		if i < 0 {
			b.WriteString(l)
			return b.String()
		}
		b.WriteString(l[:i])
		n := i
		for n < len(l) && l[n] == '`' {
			n++
		}
		ticks := l[i:n]
		end := strings.Index(l[n:], ticks)
		if end < 0 { // an unmatched run is literal text
			b.WriteString(ticks)
			l = l[n:]
			continue
		}
		l = l[n+end+len(ticks):]
	}
}

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

// section returns the lines of a Markdown file's "## title" section.
func section(t *testing.T, file, title string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	in := false
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "## ") {
			in = strings.TrimSpace(l[3:]) == title
			continue
		}
		if in {
			out = append(out, l)
		}
	}
	if out == nil {
		t.Fatalf("%s has no section %q", file, title)
	}
	return out
}

// tableRows returns the table rows of lines whose first cell is a code span
// matching name, keyed by its text, with the row's cells.
func tableRows(lines []string, name *regexp.Regexp) map[string][]string {
	rows := map[string][]string{}
	for _, l := range lines {
		if !strings.HasPrefix(strings.TrimSpace(l), "|") {
			continue
		}
		cells := strings.Split(strings.Trim(strings.TrimSpace(l), "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if m := name.FindStringSubmatch(cells[0]); m != nil {
			rows[m[1]] = cells
		}
	}
	return rows
}

// TestDocsConfiguration: docs/configuration.md's table has a row for every
// variable of Config, with the default the code has, and none for a
// variable Config lacks; the error it quotes is the one loadConfig gives.
func TestDocsConfiguration(t *testing.T) {
	const file = "docs/configuration.md"
	rows := tableRows(section(t, file, "Variables"), regexp.MustCompile("^`([A-Z][A-Z0-9_]*)`$"))
	vars := configVars()
	if len(vars) == 0 {
		t.Fatal("Config has no env tags")
	}
	inConfig := map[string]bool{}
	for _, v := range vars {
		inConfig[v.Name] = true
		row, ok := rows[v.Name]
		if !ok {
			t.Errorf("%s has no row for %s (Config, config.go): add `| `%s` | ... |` to its table", file, v.Name, v.Name)
			continue
		}
		if len(row) < 3 || row[2] == "" {
			t.Errorf("%s: the row of %s says nothing", file, v.Name)
			continue
		}
		switch {
		case v.Default != "" && row[1] != "`"+v.Default+"`":
			t.Errorf("%s: the default of %s is %s, the code's is `%s`", file, v.Name, row[1], v.Default)
		case v.Default == "" && !strings.HasPrefix(row[1], "*("):
			t.Errorf("%s: %s has no default in the code; its row says %s (want *(unset)* or *(none)*)", file, v.Name, row[1])
		}
	}
	for name := range rows {
		if !inConfig[name] {
			t.Errorf("%s has a row for %s, which Config (config.go) does not have", file, name)
		}
	}

	_, err := loadConfig(map[string]string{"HEARTBEAT_INTERVAL": "soon"})
	if err == nil {
		t.Fatal("HEARTBEAT_INTERVAL=soon was accepted")
	}
	b, err2 := os.ReadFile(file)
	if err2 != nil {
		t.Fatal(err2)
	}
	if msg := "ssebridge: configuration: " + err.Error(); !strings.Contains(string(b), "`"+msg+"`") {
		t.Errorf("%s does not quote the real configuration error: `%s`", file, msg)
	}
}

// codeMetric is a metric the code registers: its name and, for a vector,
// its labels (nil when they are not written out as literals).
type codeMetric struct {
	name   string
	labels []string
	vec    bool
	at     string
}

// codeMetrics reads every prometheus.New…(prometheus.…Opts{Name: …}, …)
// call in the module's non-test Go files.
func codeMetrics(t *testing.T) map[string]codeMetric {
	t.Helper()
	fset := token.NewFileSet()
	out := map[string]codeMetric{}
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || !strings.HasPrefix(sel.Sel.Name, "New") {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); !ok || pkg.Name != "prometheus" {
				return true
			}
			opts, ok := call.Args[0].(*ast.CompositeLit)
			if !ok {
				return true
			}
			if ot, ok := opts.Type.(*ast.SelectorExpr); !ok || !strings.HasSuffix(ot.Sel.Name, "Opts") {
				return true
			}
			at := fset.Position(call.Pos()).String()
			parts := map[string]string{}
			for _, e := range opts.Elts {
				kv, ok := e.(*ast.KeyValueExpr)
				if !ok {
					continue
				}
				key, _ := kv.Key.(*ast.Ident)
				if key == nil || (key.Name != "Name" && key.Name != "Namespace" && key.Name != "Subsystem") {
					continue
				}
				lit, ok := kv.Value.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					t.Errorf("%s: the metric's %s is not a string literal; docs_test.go cannot read it", at, key.Name)
					return true
				}
				parts[key.Name], _ = strconv.Unquote(lit.Value)
			}
			name := prometheus.BuildFQName(parts["Namespace"], parts["Subsystem"], parts["Name"])
			if name == "" {
				return true
			}
			m := codeMetric{name: name, vec: strings.HasSuffix(sel.Sel.Name, "Vec"), at: at}
			if m.vec && len(call.Args) > 1 {
				if labels, ok := call.Args[1].(*ast.CompositeLit); ok {
					m.labels = []string{}
					for _, e := range labels.Elts {
						if lit, ok := e.(*ast.BasicLit); ok && lit.Kind == token.STRING {
							s, _ := strconv.Unquote(lit.Value)
							m.labels = append(m.labels, s)
						} else {
							m.labels = nil
							break
						}
					}
				}
			}
			if prev, dup := out[name]; dup {
				t.Errorf("metric %s is registered at %s and at %s", name, prev.at, at)
			}
			out[name] = m
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) < 10 {
		t.Fatalf("found only %d metrics in the Go sources: is the parser broken? %v", len(out), out)
	}
	return out
}

var metricRow = regexp.MustCompile("^`([a-z_:][a-z0-9_:]*)(?:\\{([^}]*)\\})?`$")

// TestDocsMetrics: docs/operations.md's metrics table lists every metric
// the code registers, with its labels, and nothing else; a running
// instance serves no ssebridge_ metric the table lacks.
func TestDocsMetrics(t *testing.T) {
	const file = "docs/operations.md"
	lines := section(t, file, "Metrics")
	rows := map[string]string{} // name -> labels as written
	for _, l := range lines {
		if !strings.HasPrefix(strings.TrimSpace(l), "|") {
			continue
		}
		first := strings.TrimSpace(strings.Split(strings.Trim(strings.TrimSpace(l), "|"), "|")[0])
		if m := metricRow.FindStringSubmatch(first); m != nil {
			rows[m[1]] = m[2]
		}
	}
	code := codeMetrics(t)
	for name, m := range code {
		labels, ok := rows[name]
		if !ok {
			t.Errorf("%s has no row for %s (registered at %s)", file, name, m.at)
			continue
		}
		if m.labels != nil && labels != strings.Join(m.labels, ",") {
			t.Errorf("%s: %s is written with labels {%s}; the code's are {%s}", file, name, labels, strings.Join(m.labels, ","))
		}
		if !m.vec && labels != "" {
			t.Errorf("%s: %s has no labels in the code; the table gives it {%s}", file, name, labels)
		}
	}
	for name := range rows {
		if _, ok := code[name]; !ok {
			t.Errorf("%s has a row for %s, which the code does not register", file, name)
		}
	}

	// What a running instance serves: a vector appears once it has a
	// child, so this can only find more, never fewer, than the sources.
	body := servedMetrics(t)
	served := 0
	for _, l := range strings.Split(string(body), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 || f[0] != "#" || f[1] != "TYPE" || !strings.HasPrefix(f[2], "ssebridge_") {
			continue
		}
		served++
		if _, ok := rows[f[2]]; !ok {
			t.Errorf("/metrics serves %s; %s has no row for it", f[2], file)
		}
	}
	if served == 0 {
		t.Errorf("/metrics served no ssebridge_ metric:\n%s", body)
	}
}

// knownMetrics is every metric name an expression may use: the code's,
// and the Go runtime's and process's collectors' as ssebridge registers
// them; with their labels (nil: not checked).
func knownMetrics(t *testing.T) map[string][]string {
	t.Helper()
	known := map[string][]string{}
	for name, m := range codeMetrics(t) {
		known[name] = m.labels
		if !m.vec {
			known[name] = []string{}
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		known[f.GetName()] = nil
	}
	return known
}

var (
	exprMetric  = regexp.MustCompile(`\b((?:ssebridge|go|process)_[a-zA-Z0-9_]+)(\s*\{[^}]*\})?`)
	exprMatcher = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	// Labels Prometheus adds to every series it scrapes.
	targetLabels = []string{"job", "instance"}
)

// checkExpr checks that expr names at least one metric and that every
// ssebridge_, go_ or process_ name in it exists, with labels it has.
func checkExpr(t *testing.T, where, expr string, known map[string][]string) {
	t.Helper()
	ms := exprMetric.FindAllStringSubmatch(expr, -1)
	if len(ms) == 0 {
		t.Errorf("%s: %q names no ssebridge, go or process metric", where, expr)
	}
	for _, m := range ms {
		labels, ok := known[m[1]]
		if !ok {
			t.Errorf("%s: %q names %s, which is not a metric of ssebridge", where, expr, m[1])
			continue
		}
		if labels == nil || m[2] == "" {
			continue
		}
		for _, lm := range exprMatcher.FindAllStringSubmatch(m[2], -1) {
			if !slices.Contains(labels, lm[1]) && !slices.Contains(targetLabels, lm[1]) {
				t.Errorf("%s: %q selects label %q of %s, which has only %v", where, expr, lm[1], m[1], labels)
			}
		}
	}
}

// TestDocsDashboard: deploy/grafana/ssebridge.json parses, its panels have
// unique ids and queries, and every query names metrics that exist.
func TestDocsDashboard(t *testing.T) {
	const file = "deploy/grafana/ssebridge.json"
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	type target struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	}
	type panel struct {
		ID      int      `json:"id"`
		Type    string   `json:"type"`
		Title   string   `json:"title"`
		Targets []target `json:"targets"`
		Panels  []panel  `json:"panels"`
	}
	var dash struct {
		UID    string  `json:"uid"`
		Title  string  `json:"title"`
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if dash.UID == "" || dash.Title == "" || len(dash.Panels) == 0 {
		t.Fatalf("%s: want a uid, a title and panels", file)
	}
	known := knownMetrics(t)
	ids := map[int]string{}
	used := map[string]bool{}
	var exprs []string
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if prev, dup := ids[p.ID]; dup {
				t.Errorf("%s: panels %q and %q share id %d", file, prev, p.Title, p.ID)
			}
			ids[p.ID] = p.Title
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if p.Title == "" || len(p.Targets) == 0 {
				t.Errorf("%s: panel %d (%q) needs a title and a query", file, p.ID, p.Title)
			}
			for _, tg := range p.Targets {
				checkExpr(t, fmt.Sprintf("%s: panel %q", file, p.Title), tg.Expr, known)
				exprs = append(exprs, tg.Expr)
				for _, m := range exprMetric.FindAllStringSubmatch(tg.Expr, -1) {
					used[m[1]] = true
				}
			}
		}
	}
	walk(dash.Panels)
	checkPromQL(t, file, exprs)
	for _, want := range []string{"ssebridge_streams_open", "ssebridge_events_delivered_total", "process_resident_memory_bytes", "go_goroutines"} {
		if !used[want] {
			t.Errorf("%s has no panel of %s", file, want)
		}
	}
}

// TestDocsAlerts: every expression of the alert rules, and every series of
// their unit tests, names metrics that exist (promtool, run by .ci/run,
// checks the rest).
func TestDocsAlerts(t *testing.T) {
	known := knownMetrics(t)
	for _, file := range []string{"deploy/prometheus/alerts.yml", "deploy/prometheus/alerts_test.yml"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		lines := strings.Split(string(b), "\n")
		for i, l := range lines {
			key, val, ok := strings.Cut(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "- ")), ":")
			if !ok || (key != "expr" && key != "series") {
				continue
			}
			val = strings.TrimSpace(val)
			if strings.HasPrefix(val, "|") || strings.HasPrefix(val, ">") {
				// A block scalar: the lines indented deeper than the key's.
				indent := len(l) - len(strings.TrimLeft(l, " "))
				val = ""
				for _, next := range lines[i+1:] {
					if strings.TrimSpace(next) != "" && len(next)-len(strings.TrimLeft(next, " ")) <= indent {
						break
					}
					val += " " + strings.TrimSpace(next)
				}
			}
			val = strings.Trim(strings.TrimSpace(val), `'"`)
			if val == "" {
				t.Errorf("%s:%d: an empty %s", file, i+1, key)
				continue
			}
			if !exprMetric.MatchString(val) {
				continue // up, probe_success: Prometheus's own
			}
			n++
			checkExpr(t, fmt.Sprintf("%s:%d", file, i+1), val, known)
		}
		if n == 0 {
			t.Errorf("%s: no expression names an ssebridge metric", file)
		}
	}
}

// checkPromQL has promtool parse exprs, Grafana's variables replaced by
// values, as recording rules. Without promtool it says so and passes
// (.ci/run installs it; under CI=true it must be there).
func checkPromQL(t *testing.T, file string, exprs []string) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Errorf("promtool is not installed (apt-get install -y prometheus; .ci/run does it): %s's queries not parsed", file)
		} else {
			t.Logf("promtool is not installed: %s's queries not parsed (apt-get install -y prometheus)", file)
		}
		return
	}
	vars := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$job", ".*", "$instance", ".*")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		q, _ := json.Marshal(vars.Replace(e)) // a JSON string is a YAML double-quoted scalar
		fmt.Fprintf(&rules, "      - record: dashboard_query_%d\n        expr: %s\n", i, q)
	}
	path := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(path, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput(); err != nil {
		t.Errorf("promtool does not parse %s's queries: %v\n%s", file, err, out)
	}
}

// servedMetrics is what /metrics of an instance served in this process
// (serveInProcess) answers.
func servedMetrics(t *testing.T) []byte {
	t.Helper()
	resp, err := http.Get(serveInProcess(t) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// serveInProcess runs ssebridge (run, in this process) on a redis-server of
// its own until the test ends, and returns its URL once /readyz answers 200.
// The end-to-end tests run the binary instead (e2e/).
func serveInProcess(t *testing.T) string {
	t.Helper()
	r := redistest.Start(t)
	cfg, err := loadConfig(map[string]string{"REDIS_URL": r.URL(), "LISTEN_ADDR": "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr, done := make(chan string, 1), make(chan error, 1)
	go func() { done <- run(ctx, cfg, slog.New(slog.DiscardHandler), func(a string) { addr <- a }) }()
	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case err := <-done:
		cancel()
		t.Fatal("ssebridge did not start:", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error("ssebridge:", err)
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz did not answer 200 within 10s")
		}
	}
}

// TestNoConflictMarkers: a merge whose conflict was committed unresolved
// leaves both sides' text in a file; nothing else notices it in a
// document.
func TestNoConflictMarkers(t *testing.T) {
	markers := []string{strings.Repeat("<", 7) + " ", strings.Repeat(">", 7) + " "}
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != "." && (strings.HasPrefix(name, ".") || name == "node_modules" || name == "artifacts") {
				return filepath.SkipDir
			}
			return nil
		}
		switch filepath.Ext(path) {
		case ".go", ".md", ".py", ".js", ".lua", ".html", ".yml", ".yaml", ".toml", ".conf", ".sh":
		default:
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			for _, m := range markers {
				if strings.HasPrefix(line, m) {
					t.Errorf("%s:%d: a merge conflict's marker: %q", path, i+1, line)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A current figure: measured, and stated in one place (its home). Other
// pages link to it there rather than repeat it, so that when it moves no
// page goes on stating the old one.
type figure struct {
	id   string // its anchor in home: <a id="id"></a>, in its table row or paragraph
	home string // the one file that states it
	what string
	// re finds a statement of it; its group "n" is the number(s) stated.
	re *regexp.Regexp
}

// figureNum is a number or a range of them: 14, 2.4–2.6, 15,000, 6 to 9.
const figureNum = `(?P<n>\d[\d,]*(?:\.\d+)?(?:\s*(?:–|-|to)\s*\d[\d,]*(?:\.\d+)?)?)`

// near is up to 80 characters that do not end a sentence; cell is the
// rest of a table row's cell and the start of the next.
const (
	near = `(?:[^.]|\.\S){0,80}?`
	cell = `[^|]*\|[^|]{0,40}?`
)

func figureRE(alternatives ...string) *regexp.Regexp {
	for i, a := range alternatives {
		alternatives[i] = "(?:" + strings.ReplaceAll(a, "N", figureNum) + ")"
	}
	re := strings.Join(alternatives, "|")
	// One group named n per alternative: keep the names, Go allows repeats.
	return regexp.MustCompile(`(?i)` + re)
}

// currentFigures are the figures that pages repeated and let go stale
// (issue 19): the test-run time, and BENCHMARKS.md's current table.
var currentFigures = []figure{
	{"rss-per-idle-stream", "BENCHMARKS.md", "RSS per idle stream", figureRE(
		`\bN\s*KiB(?:\s+of\s+RSS)?\s+(?:per|a|each)\s+(?:idle\s+|open\s+|live\s+)?stream`,
		`\bN\s*KiB\s*×\s*streams`,
		`\bN\s*KiB\s+each\b`,
		`\bstreams?\s+costs?\s+(?:about\s+)?N\s*KiB`,
		`\bRSS per (?:idle |open )?stream\b(?:`+near+`|`+cell+`)\bN\s*KiB`,
	)},
	{"cpu-per-delivery", "BENCHMARKS.md", "CPU per delivery", figureRE(
		`\bN\s*(?:µs|us|ns)(?:\s+of\s+(?:server\s+)?CPU)?\s+(?:per|a|each)\s+(?:broadcast\s+)?delivery`,
		`\bCPU per delivery\b(?:`+near+`|`+cell+`)\bN\s*(?:µs|ns)`,
		`\bdelivery\b`+near+`\bcosts?\s+(?:about\s+)?N\s*(?:µs|ns)`,
	)},
	{"per-user-events", "BENCHMARKS.md", "CPU per per-user event", figureRE(
		`\bN\s*µs\s+(?:per|a|each)\s+(?:per-user\s+)?event`,
		`\bCPU per per-user event\b(?:`+near+`|`+cell+`)\bN\s*µs`,
	)},
	{"idle-stream-cpu", "BENCHMARKS.md", "CPU of an idle stream", figureRE(
		`\bN\s*µs\s+(?:per|a)\s+(?:second\s+per\s+stream|stream\s+per\s+second)`,
	)},
	{"latency", "BENCHMARKS.md", "latency", figureRE(
		`\bp(?:50|90|99)\s+(?:of\s+)?N\s*(?:ms|s)\b`,
	)},
	{"centrifugo", "BENCHMARKS.md", "Centrifugo side by side", figureRE(
		`\bCentrifugo(?:\s+v\d+(?:\.\d+)*)?(?:'s)?\s*\(?N`,
		`\bN\s*(?:×|x)\s+(?:the\s+)?Centrifugo`,
	)},
	{"reconnect-storm", "BENCHMARKS.md", "reconnect storm", figureRE(
		`\blast (?:stream )?live\b`+near+`\bN\s*s\b`,
		`\bN\s*µs\s+of\s+(?:Redis\s+)?CPU\b`+near+`\breconnect`,
		`\breconnect`+near+`\bN\s*µs\s+of\s+CPU`,
		`\bRedis CPU per reconnecting stream\b`+cell+`\bN\s*µs`,
	)},
	{"test-run-time", "docs/testing.md", "test run's time", figureRE(
		`\b(?:took|takes|take|lasted|lasts)\s+(?:about\s+|some\s+|around\s+)?N\s*(?:minutes|min)\b`,
		`\bN\s*minutes\s+on\s+(?:\d+|two)[\s-]+cores?\b`,
		`\btest run\b`+near+`\bN\s*minutes\b`,
	)},
}

// mdUnit is a paragraph, a list item or a table row of a Markdown file,
// outside fenced code, its lines joined with spaces and code spans removed:
// a figure wrapped over two lines is still found, and one in a command is
// not a statement. record is true under a heading that marks a record.
type mdUnit struct {
	text   string
	starts []int // byte offset in text where each line begins
	line   int   // of the first
	record bool
}

// lineAt is the line of a byte offset of u.text.
func (u mdUnit) lineAt(off int) int {
	n := 0
	for i, s := range u.starts {
		if s <= off {
			n = i
		}
	}
	return u.line + n
}

var (
	recordHeading = regexp.MustCompile("(?i)^(?:history|earlier)\\b|\\b\\d{4}-\\d{2}-\\d{2}\\b|`[0-9a-f]{7,40}`")
	unitStart     = regexp.MustCompile(`^\s*(?:\||[-*+]\s|\d+[.)]\s|>)`)
)

// mdUnits splits md into units. A heading marks its section as a record
// of the past — figures there are what was measured then, not current
// claims — when it begins with "History" or "Earlier", or names a date
// (2026-12-05) or a commit (`fb93c43`); the section runs to the next
// heading of the same level or a higher one.
func mdUnits(md string) []mdUnit {
	raw := strings.Split(md, "\n")
	var out []mdUnit
	var cur *mdUnit
	last := -1
	recordAt := 0 // the level of the outermost open record heading; 0: none
	flush := func() {
		if cur != nil {
			out = append(out, *cur)
			cur = nil
		}
	}
	for _, l := range proseLines(md) {
		r := raw[l.n-1]
		if m := atxHeading.FindStringSubmatch(r); m != nil {
			flush()
			level := len(strings.TrimLeft(r, " ")) - len(strings.TrimLeft(r, " #"))
			if recordAt != 0 && level <= recordAt {
				recordAt = 0
			}
			if recordAt == 0 && recordHeading.MatchString(strings.TrimSpace(m[1])) {
				recordAt = level
			}
			last = l.n
			continue
		}
		if strings.TrimSpace(l.text) == "" || l.n != last+1 || unitStart.MatchString(r) || strings.HasPrefix(strings.TrimSpace(r), "|") {
			flush()
		}
		last = l.n
		if strings.TrimSpace(l.text) == "" {
			continue
		}
		if cur == nil {
			cur = &mdUnit{line: l.n, record: recordAt != 0}
		} else {
			cur.text += " "
		}
		cur.starts = append(cur.starts, len(cur.text))
		cur.text += l.text
	}
	flush()
	return out
}

// figureFiles are the repository's Markdown files: every one, but those
// of directories git ignores or that hold no documentation.
func figureFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch name := d.Name(); {
			case path == ".":
			case strings.HasPrefix(name, "."), name == "node_modules", name == "testdata", name == "artifacts", name == "dist", path == filepath.Join("bench", "results"):
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(path, ".md") {
			files = append(files, filepath.ToSlash(path))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

var figureNumber = regexp.MustCompile(`\d[\d,]*(?:\.\d+)?`)

// numbers are the numbers of s as values: 2.6 and 2.60 are one number.
func numbers(s string) []float64 {
	var out []float64
	for _, n := range figureNumber.FindAllString(s, -1) {
		if v, err := strconv.ParseFloat(strings.ReplaceAll(n, ",", ""), 64); err == nil {
			out = append(out, v)
		}
	}
	return out
}

// figureRows finds the rows (or paragraphs) of the figures' homes that
// carry an anchor, <a id="…"></a>, by file and anchor. Each figure needs
// its own (figure.id); more rows of it take anchors that begin with it
// (cpu-per-delivery-15k).
func figureRows(t *testing.T, figures []figure, read func(string) string) map[string]map[string]string {
	t.Helper()
	rows := map[string]map[string]string{}
	for _, f := range figures {
		if rows[f.home] != nil {
			continue
		}
		rows[f.home] = map[string]string{}
		for _, u := range mdUnits(read(f.home)) {
			for _, m := range htmlAnchor.FindAllStringSubmatch(u.text, -1) {
				rows[f.home][m[1]] = u.text
			}
		}
	}
	for _, f := range figures {
		if rows[f.home][f.id] == "" {
			t.Errorf("%s: no row or paragraph with <a id=%q></a>: the one place of the %s, which other pages link to", f.home, f.id, f.what)
		}
	}
	return rows
}

// linkTarget resolves a link of file to a file of the repository and an
// anchor.
func linkTarget(file, target string) (path, frag string) {
	path, frag, _ = strings.Cut(strings.Trim(target, "<>"), "#")
	if path == "" {
		return file, frag
	}
	return filepath.ToSlash(filepath.Join(filepath.Dir(file), path)), frag
}

// repeatedFigures checks file, its text md, against the figures and their
// homes' rows (figureRows). Outside a record's section (mdUnits):
//
//   - A paragraph, list item or table row of a page other than the
//     figure's home that states the figure (figure.re) fails, unless it
//     links to rows of that home and every number it states is one of
//     those rows' numbers. That is how a page that reasons with a figure
//     (docs/SCALING.md's arithmetic) quotes it. The link, not the
//     pattern, says which figure it is: "25–28 KiB per stream" beside a
//     link to the reconnect storm's row is that row's.
//   - A link to a row whose text holds numbers quotes that row: each
//     number must be one of the row's.
//
// When the figure moves, its row changes and every quote of the old value
// fails here.
func repeatedFigures(file, md string, figures []figure, rows map[string]map[string]string) []string {
	var errs []string
	const how = "link to it there instead; where a page reasons with it, quote it as it stands there, beside the link; a record of the past goes under a heading that begins with History or Earlier or names a date or a commit"
	for _, u := range mdUnits(md) {
		if u.record {
			continue
		}
		links := inlineLink.FindAllStringSubmatchIndex(u.text, -1)
		// plain is u.text with each link replaced by its text, padded with
		// spaces to the same length: offsets, and so lines, stay.
		plain := inlineLink.ReplaceAllStringFunc(u.text, func(l string) string {
			text := l[strings.IndexByte(l, '[')+1 : strings.LastIndex(l, "](")]
			return " " + text + strings.Repeat(" ", len(l)-len(text)-1)
		})
		for _, l := range links {
			path, frag := linkTarget(file, u.text[l[2]:l[3]])
			row, ok := rows[path][frag]
			if !ok {
				continue
			}
			whole := u.text[l[0]:l[1]]
			text := whole[strings.IndexByte(whole, '[')+1 : strings.LastIndex(whole, "](")]
			for _, n := range numbers(text) {
				if !slices.Contains(numbers(row), n) {
					errs = append(errs, fmt.Sprintf("%s:%d: the link %q quotes %v, which %s#%s no longer states: %q",
						file, u.lineAt(l[0]), whole, n, path, frag, row))
				}
			}
		}
		for _, f := range figures {
			if file == f.home {
				continue
			}
			var cited []float64 // the numbers of the rows of f.home this unit links to
			cites := false
			for _, l := range links {
				path, frag := linkTarget(file, u.text[l[2]:l[3]])
				if row, ok := rows[path][frag]; ok && path == f.home {
					cites = true
					cited = append(cited, numbers(row)...)
				}
			}
			for _, loc := range f.re.FindAllStringSubmatchIndex(plain, -1) {
				var stated string
				for i, name := range f.re.SubexpNames() {
					if name == "n" && loc[2*i] >= 0 {
						stated = plain[loc[2*i]:loc[2*i+1]]
					}
				}
				quoted := cites
				for _, n := range numbers(stated) {
					quoted = quoted && slices.Contains(cited, n)
				}
				if quoted {
					continue
				}
				why := "the " + f.what + ", whose one place is " + f.home + "#" + f.id
				if cites {
					why += ", where it no longer stands so"
				}
				errs = append(errs, fmt.Sprintf("%s:%d: %q states %s: %s", file, u.lineAt(loc[0]), strings.Join(strings.Fields(plain[loc[0]:loc[1]]), " "), why, how))
			}
		}
	}
	return errs
}

// TestDocsFigures: a current figure (RSS per idle stream, CPU per
// delivery, the comparison with Centrifugo, the test run's time…) is
// stated in one place, and every other page links to it (issue 19: five
// pages gave four values of one figure). See repeatedFigures for the rule.
func TestDocsFigures(t *testing.T) {
	read := func(file string) string {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	rows := figureRows(t, currentFigures, read)
	files := figureFiles(t)
	if len(files) < 10 {
		t.Fatalf("found only %d Markdown files: %v", len(files), files)
	}
	for _, file := range files {
		for _, e := range repeatedFigures(file, read(file), currentFigures, rows) {
			t.Error(e)
		}
	}
}

// TestDocsFigureRule pins what repeatedFigures takes for a statement of a
// figure, a quote of it and a record.
func TestDocsFigureRule(t *testing.T) {
	figures := []figure{currentFigures[0], currentFigures[len(currentFigures)-1]}
	rows := map[string]map[string]string{
		"BENCHMARKS.md": {
			"rss-per-idle-stream":     `| <a id="rss-per-idle-stream"></a>RSS per idle stream, 15,000 streams | 2.49–2.60 KiB |`,
			"rss-per-idle-stream-10k": `| <a id="rss-per-idle-stream-10k"></a>RSS per idle stream, 10,000 streams | 2.6–2.8 KiB |`,
			"reconnect-storm":         `| <a id="reconnect-storm"></a>Reconnect storm | RSS 250–280 MiB more, 25–28 KiB per stream |`,
		},
		"docs/testing.md": {"test-run-time": `<a id="test-run-time"></a>The whole run took 12 min 6 s.`},
	}
	for md, want := range map[string]int{
		"A stream costs about 14 KiB.":                                                     1,
		"about 14 KiB per idle\nstream was measured":                                       1,
		"| RSS per idle stream | 2.4–2.6 KiB at 15,000 |":                                  1,
		"Each stream gets a 64 KiB `bufio.Reader`.":                                        0,
		"Replay pages of 256 KiB, per stream at most one.":                                 0,
		"`go run ./bench` reports 14 KiB per stream":                                       1,
		"It took 12 to 14 minutes here.":                                                   1,
		"`go test -race ./...` took 3 min 3 s.":                                            1,
		"go test's default of 10 minutes is shorter":                                       0,
		"The soak runs 10 minutes.":                                                        0,
		"See [the figure](BENCHMARKS.md#rss-per-idle-stream)":                              0,
		"Memory: [2.60 KiB](BENCHMARKS.md#rss-per-idle-stream) × streams.":                 0,
		"Memory: 2.6 KiB × streams ([now](BENCHMARKS.md#rss-per-idle-stream))":             0, // 2.6 is 2.60
		"Memory: 2.8 KiB per stream ([at 10,000](BENCHMARKS.md#rss-per-idle-stream-10k))":  0,
		"A storm: 25–28 KiB per stream ([the storm](BENCHMARKS.md#reconnect-storm))":       0,
		"A storm: 30 KiB per stream ([the storm](BENCHMARKS.md#reconnect-storm))":          1,
		"Memory: 2.5 KiB per stream ([now](BENCHMARKS.md#rss-per-idle-stream))":            1, // not as it stands there
		"Memory: [2.5 KiB](BENCHMARKS.md#rss-per-idle-stream)":                             1,
		"Memory: 4.2 KiB per stream ([now](BENCHMARKS.md#rss-per-idle-stream))":            1,
		"Memory: 2.60 KiB per stream ([now](BENCHMARKS.md#other))":                         1,
		"Memory: 2.60 KiB per stream ([now](docs/BENCHMARKS.md#rss-per-idle-stream))":      1,
		"[took 12 min 6 s](docs/testing.md#test-run-time)":                                 0,
		"[took 11 min](docs/testing.md#test-run-time)":                                     2, // the link, and the statement
		"## 0.3.0 - 2026-12-05\n\n14 KiB per stream\n\n## Unreleased\n\n14 KiB per stream": 1,
		"## Run 4 (commit `514044e`)\n\n### Figures\n\n14 KiB per stream":                  0,
		"## History\n\n14 KiB per stream\n\n# Now\n\n14 KiB per stream":                    1,
		"## Where the history lives\n\n14 KiB per stream":                                  1,
		"```\n14 KiB per stream\n```":                                                      0,
	} {
		if got := repeatedFigures("README.md", md, figures, rows); len(got) != want {
			t.Errorf("%q: %d errors, want %d: %q", md, len(got), want, got)
		}
	}
	if got := repeatedFigures("BENCHMARKS.md", "A stream costs about 14 KiB.", figures, rows); len(got) != 0 {
		t.Errorf("its home may state a figure: %q", got)
	}
	if got := repeatedFigures("docs/SCALING.md", "[2.60 KiB](../BENCHMARKS.md#rss-per-idle-stream) × streams", figures, rows); len(got) != 0 {
		t.Errorf("a quote from another directory: %q", got)
	}
	if got := repeatedFigures("docs/SCALING.md", "[2.60 KiB](BENCHMARKS.md#rss-per-idle-stream) × streams, [2.60 KiB](../BENCHMARKS.md#pictures) each", figures, rows); len(got) != 2 {
		t.Errorf("quotes linking to docs/BENCHMARKS.md and to a heading: %q", got)
	}
	if got := repeatedFigures("docs/SCALING.md", "about 14 KiB per idle stream\nwas measured ([x](../BENCHMARKS.md))", figures, rows); len(got) != 1 || !strings.HasPrefix(got[0], "docs/SCALING.md:1: ") {
		t.Errorf("want one error at line 1: %q", got)
	}
	if got := repeatedFigures("README.md", "First line.\nThe tests took\n8 minutes.", figures, rows); len(got) != 1 || !strings.HasPrefix(got[0], "README.md:2: ") {
		t.Errorf("want one error at line 2: %q", got)
	}
}
