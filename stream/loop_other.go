//go:build !linux

package stream

import "net"

// Elsewhere than Linux, every stream has a goroutine writer (ServeConn).

type loops struct{}

func newLoops(*Hub, int) *loops    { return nil }
func (*loops) takes(net.Conn) bool { return false }
func (*loops) wait()               {}
func loopCount(int) int            { return 0 }

type loopConn struct{}

func (*loopConn) ready() {}

func (h *Hub) serveTaken(s *Stream, conn net.Conn, opts WriteOptions) {
	h.Close(s, s.ServeConn(conn, opts))
}
