//go:build !linux

package stream

import "net"

// Elsewhere than Linux, every stream has a goroutine writer (serveConn).

type loops struct{}

func newLoops(*Hub, int) *loops    { return nil }
func (*loops) takes(net.Conn) bool { return false }
func (*loops) wait()               {}
func loopCount(int) int            { return 0 }

type loopConn struct{}

func (*loopConn) ready() {}

// serveOnLoop is never called here (no loop takes a connection); it is
// serveConn's path, for the build.
func (h *Hub) serveOnLoop(s *Stream, conn net.Conn, opts WriteOptions) {
	h.Close(s, s.serveConn(conn, opts))
}
