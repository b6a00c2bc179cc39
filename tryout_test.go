package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestTryOutFileOwner: a server removes its own file at the end, not the
// one a later server wrote over it.
func TestTryOutFileOwner(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "tryout.json")
	removeA, err := writeTryOut(path, tryOut{URL: "http://127.0.0.1:1", Redis: "redis://127.0.0.1:2"})
	if err != nil {
		t.Fatal(err)
	}
	removeB, err := writeTryOut(path, tryOut{URL: "http://127.0.0.1:3", Redis: "redis://127.0.0.1:4"})
	if err != nil {
		t.Fatal(err)
	}
	removeA()
	if got, err := readTryOut(path); err != nil || got.URL != "http://127.0.0.1:3" {
		t.Fatalf("after the first server ended: %+v %v, want the second's file", got, err)
	}
	removeB()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("file still there: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "*")); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
}

func TestTryOutClientURL(t *testing.T) {
	for in, want := range map[string]string{
		":8080":          "http://127.0.0.1:8080",
		"[::]:8080":      "http://127.0.0.1:8080",
		"0.0.0.0:8080":   "http://127.0.0.1:8080",
		"127.0.0.1:9000": "http://127.0.0.1:9000",
		"[::1]:9000":     "http://[::1]:9000",
		"10.1.2.3:80":    "http://10.1.2.3:80",
	} {
		if got := clientURL(in); got != want {
			t.Errorf("clientURL(%q) = %q, want %q", in, got, want)
		}
	}
}
