package main

// The figures' tests: a current figure is stated in its home alone, and
// quoted elsewhere only beside a link to it, with its numbers
// (TestDocsFigures, and TestDocsFigureRule for the rule itself).

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

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
