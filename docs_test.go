package main

// The documentation's own tests (docs/testing.md): links that resolve and
// stay inside the repository (docs_links_test.go), a configuration table
// and a metrics table that match the code, a Grafana dashboard and alert
// rules that name metrics that exist (docs_metrics_test.go), and current
// figures stated in one place (docs_figures_test.go). This file holds the
// Markdown readers they share, the configuration table's test and the
// check for committed conflict markers.

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
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
