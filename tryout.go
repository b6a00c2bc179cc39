package main

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"
)

// tryOut is what a server in embedded mode (no REDIS_URL) leaves for
// `ssebridge publish` and `ssebridge tail` run on the same machine, so that
// they work with no flags: publish goes through the embedded Redis, tail
// makes itself a session with POST /dev/login. The file holds no secret
// (embedded mode has none to hold), but is written 0600 in a 0700
// directory all the same, and removed when the server ends.
type tryOut struct {
	URL           string    `json:"url"`   // the server, e.g. http://127.0.0.1:8080
	Redis         string    `json:"redis"` // the embedded Redis, e.g. redis://127.0.0.1:40123
	ChannelPrefix string    `json:"channel_prefix"`
	SessionCookie string    `json:"session_cookie"`
	PID           int       `json:"pid"`
	Started       time.Time `json:"started"`
	Instance      string    `json:"instance"` // tells this server's file from a later one's
}

// announceTryOut wraps a server's listening callback so that it also
// writes the try-out file; end removes it, if it was written.
func announceTryOut(cfg Config, redisURL string, log *slog.Logger, listening func(string)) (wrapped func(string), end func()) {
	var remove func()
	wrapped = func(addr string) {
		path, t := tryOutPath(), tryOut{
			URL: clientURL(addr), Redis: redisURL, ChannelPrefix: cfg.ChannelPrefix,
			SessionCookie: cfg.SessionCookie, PID: os.Getpid(), Started: time.Now().Round(time.Second),
		}
		var err error
		if remove, err = writeTryOut(path, t); err != nil {
			log.Warn("try-out file not written: publish and tail need -redis, -url and -token", "err", err)
		} else {
			log.Info("try-out: `ssebridge publish` and `ssebridge tail` on this machine use this instance with no flags", "file", path)
		}
		if listening != nil {
			listening(addr)
		}
	}
	end = func() {
		if remove != nil {
			remove()
		}
	}
	return wrapped, end
}

// tryOutPath is $XDG_CACHE_HOME/ssebridge/tryout.json (~/.cache/… on
// Linux, ~/Library/Caches/… on macOS), or a per-user directory in the
// temporary directory when there is no cache directory.
func tryOutPath() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		return filepath.Join(os.TempDir(), fmt.Sprintf("ssebridge-%d", os.Getuid()), "tryout.json")
	}
	return filepath.Join(dir, "ssebridge", "tryout.json")
}

// clientURL turns a listener's address into one a client on this machine
// can dial: an unspecified host (":8080", "[::]:8080") becomes 127.0.0.1.
func clientURL(listenAddr string) string {
	host, port, err := net.SplitHostPort(listenAddr)
	if err != nil {
		return "http://" + listenAddr
	}
	if ip := net.ParseIP(host); host == "" || ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// writeTryOut writes t to path, atomically, and returns a function that
// removes it unless another server has written its own since.
func writeTryOut(path string, t tryOut) (remove func(), err error) {
	nonce := make([]byte, 8)
	_, _ = rand.Read(nonce)
	t.Instance = fmt.Sprintf("%x", nonce)
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tryout-*.json") // created 0600
	if err != nil {
		return nil, err
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return nil, err
	}
	return func() {
		if cur, err := readTryOut(path); err == nil && cur.Instance == t.Instance {
			os.Remove(path)
		}
	}, nil
}

// readTryOut reads the file a server in embedded mode wrote at path.
func readTryOut(path string) (tryOut, error) {
	var t tryOut
	b, err := os.ReadFile(path)
	if err != nil {
		return t, err
	}
	if err := json.Unmarshal(b, &t); err != nil {
		return t, fmt.Errorf("%s: %w", path, err)
	}
	if t.URL == "" || t.Redis == "" {
		return t, fmt.Errorf("%s: no url or redis in it", path)
	}
	return t, nil
}

// findTryOut returns the try-out file's content when there is one; ok is
// false when there is none. Any other trouble with it is an error.
func findTryOut() (t tryOut, path string, ok bool, err error) {
	path = tryOutPath()
	t, err = readTryOut(path)
	if errors.Is(err, os.ErrNotExist) {
		return t, path, false, nil
	}
	return t, path, err == nil, err
}

// stale says what to suspect when the instance in the try-out file does not answer.
func (t tryOut) stale(path string) string {
	return fmt.Sprintf("is the ssebridge that wrote %s (pid %d, started %s) still running? A server that was killed leaves it behind: delete it",
		path, t.PID, t.Started.Format(time.DateTime))
}
