package main

// The metrics' tests: docs/operations.md's table against the metrics the
// code registers and an instance serves, and the Grafana dashboard's and
// the alert rules' expressions against the metrics that exist.

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
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ssebridge/ssebridge/internal/redistest"
)

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
