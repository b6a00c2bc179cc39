// Package ssetest is a small Server-Sent Events client for tests: it keeps
// everything on the wire (comments, retry:, ids) so tests can assert on it.
package ssetest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Event is one dispatched block of the stream. A comment-only block has
// Comment set and nothing else.
type Event struct {
	ID, Event, Data, Retry, Comment string
	HasID                           bool
}

// Stream is an open event stream.
type Stream struct {
	Response *http.Response
	events   chan Event
	done     chan struct{}
	err      error
	ctx      context.Context
	cancel   context.CancelFunc
}

// Open requests url with the given headers. On a non-200 answer it returns
// the response (body read into the error) and no stream.
func Open(ctx context.Context, url string, header http.Header) (*Stream, error) {
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		return nil, &StatusError{Response: resp, Body: string(body)}
	}
	s := &Stream{Response: resp, events: make(chan Event, 1024), done: make(chan struct{}), ctx: ctx, cancel: cancel}
	go s.read()
	return s, nil
}

// StatusError is a refused request.
type StatusError struct {
	Response *http.Response
	Body     string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("status %d: %s", e.Response.StatusCode, e.Body)
}

// Close ends the stream and waits for its reader.
func (s *Stream) Close() {
	s.cancel()
	s.Response.Body.Close()
	<-s.done
}

// ErrTimeout is returned by Next when no event came in time.
var ErrTimeout = errors.New("no event in time")

// Next returns the next block, or the read error (io.EOF when the server
// closed the stream) once all blocks are consumed.
func (s *Stream) Next(timeout time.Duration) (Event, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case ev, ok := <-s.events:
		if !ok {
			return Event{}, s.err
		}
		return ev, nil
	case <-t.C:
		return Event{}, ErrTimeout
	}
}

// NextEvent is Next skipping comment-only blocks (heartbeats).
func (s *Stream) NextEvent(timeout time.Duration) (Event, error) {
	deadline := time.Now().Add(timeout)
	for {
		ev, err := s.Next(time.Until(deadline))
		if err != nil || ev.Comment == "" || ev.Event != "" || ev.Data != "" || ev.Retry != "" {
			return ev, err
		}
	}
}

func (s *Stream) read() {
	defer close(s.done)
	defer close(s.events)
	r := bufio.NewReaderSize(s.Response.Body, 1<<16)
	var ev Event
	var data []string
	var any bool
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			s.err = err
			if errors.Is(err, context.Canceled) {
				s.err = io.EOF
			}
			return
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			if any {
				ev.Data = strings.Join(data, "\n")
				select {
				case s.events <- ev:
				case <-s.ctx.Done():
					s.err = io.EOF
					return
				}
			}
			ev, data, any = Event{}, nil, false
			continue
		}
		any = true
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "":
			ev.Comment = value
		case "id":
			ev.ID, ev.HasID = value, true
		case "event":
			ev.Event = value
		case "data":
			data = append(data, value)
		case "retry":
			ev.Retry = value
		}
	}
}
