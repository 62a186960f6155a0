package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// listener is one served interface: a socket bound to it on the server
// port, and one on the proxyDHCP port.
type listener struct {
	name  string
	index int
	addrs atomic.Pointer[[]netip.Prefix]
	conns []*net.UDPConn
}

// iface is an interface as refresh sees it.
type iface struct {
	index int
	addrs []netip.Prefix
}

// refresh binds the interfaces to serve and closes the others. At the
// first call (strict) a missing named interface or a failed bind is an
// error; later they are logged and retried.
func (s *Server) refresh(ctx context.Context, strict bool) error {
	want, err := s.wanted()
	s.lmu.Lock()
	defer s.lmu.Unlock()
	for name, l := range s.listeners {
		if w, ok := want[name]; !ok || w.index != l.index {
			s.log.Info("no longer serving interface", "interface", name)
			l.close()
			delete(s.listeners, name)
		}
	}
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for name, w := range want {
		addrs := w.addrs
		if l := s.listeners[name]; l != nil {
			if !slices.Equal(*l.addrs.Load(), addrs) {
				l.addrs.Store(&addrs)
			}
			continue
		}
		l, err := s.listen(ctx, name, w)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.listeners[name] = l
		s.log.Info("serving interface", "interface", name, "addrs", addrs, "port", s.opts.Port)
	}
	if strict && len(s.listeners) == 0 && len(errs) == 0 {
		s.log.Warn("no interface to serve yet: none has an address in a served subnet; looking again every few seconds")
	}
	return errors.Join(errs...)
}

// wanted lists the interfaces to serve.
func (s *Server) wanted() (map[string]iface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	all := map[string]iface{}
	var locals []netip.Addr
	defer func() { s.setLocalAddrs(locals) }()
	for _, i := range ifs {
		addrs, err := i.Addrs()
		if err != nil {
			continue
		}
		var v4 []netip.Prefix
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap().Is4() {
					ones, _ := n.Mask.Size()
					v4 = append(v4, netip.PrefixFrom(ip.Unmap(), ones))
					locals = append(locals, ip.Unmap())
				}
			}
		}
		if i.Flags&net.FlagUp != 0 {
			all[i.Name] = iface{index: i.Index, addrs: v4}
		}
	}
	want := map[string]iface{}
	if len(s.opts.Interfaces) > 0 {
		var errs []error
		for _, name := range s.opts.Interfaces {
			i, ok := all[name]
			if !ok {
				errs = append(errs, fmt.Errorf("interface %s: not found or down", name))
				continue
			}
			want[name] = i
		}
		return want, errors.Join(errs...)
	}
	cfg := s.cfg.Load()
	for name, i := range all {
		for _, a := range i.addrs {
			if sn := cfg.subnetOf(a.Addr()); sn != nil && sn.Mode != ModeRelay {
				want[name] = i
				break
			}
		}
	}
	// Relay subnets: the interface that leads to their relay (gateway).
	for _, sn := range cfg.subnets {
		if sn.Mode == ModeRelay || (sn.Mode == ModeProxy && !anyAddrIn(all, sn.Prefix)) {
			to := sn.Gateway
			if !to.IsValid() {
				to = sn.Prefix.Addr().Next()
			}
			if src, ok := routeSource(to); ok {
				for name, i := range all {
					if hasAddr(i.addrs, src) {
						want[name] = i
					}
				}
			}
		}
	}
	return want, nil
}

func anyAddrIn(all map[string]iface, p netip.Prefix) bool {
	for _, i := range all {
		if hasAddrIn(i.addrs, p) {
			return true
		}
	}
	return false
}

// routeSource is the source address the kernel would use toward dst (a
// connected UDP socket sends nothing).
func routeSource(dst netip.Addr) (netip.Addr, bool) {
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 67)))
	if err != nil {
		return netip.Addr{}, false
	}
	defer c.Close()
	a, ok := c.LocalAddr().(*net.UDPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	return a.AddrPort().Addr().Unmap(), true
}

// listen binds an interface's sockets and starts reading them.
func (s *Server) listen(ctx context.Context, name string, w iface) (*listener, error) {
	l := &listener{name: name, index: w.index}
	addrs := w.addrs
	l.addrs.Store(&addrs)
	ports := []int{s.opts.Port}
	if s.opts.ProxyPort > 0 {
		ports = append(ports, s.opts.ProxyPort)
	}
	for _, port := range ports {
		c, err := listenUDP(ctx, name, port)
		if err != nil {
			l.close()
			return nil, fmt.Errorf("interface %s: %w", name, err)
		}
		l.conns = append(l.conns, c)
	}
	for i, c := range l.conns {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serve(ctx, l, c, i == 1)
		}()
	}
	return l, nil
}

func (l *listener) close() {
	for _, c := range l.conns {
		c.Close()
	}
}

func (s *Server) closeListeners() {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	for name, l := range s.listeners {
		l.close()
		delete(s.listeners, name)
	}
}

// serve reads one socket until it is closed. Each request is decoded
// here and handled in its own goroutine (at most maxInFlight at once),
// since an ACK may wait for its lease to be stored.
func (s *Server) serve(ctx context.Context, l *listener, c *net.UDPConn, proxy bool) {
	buf := make([]byte, 65536)
	oob := make([]byte, 256)
	for {
		n, oobn, flags, peer, err := c.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			s.log.Warn("read", "interface", l.name, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		start := time.Now()
		req, ok := s.decode(buf[:n], flags&syscall.MSG_TRUNC != 0)
		if !ok {
			continue
		}
		in := Arrival{Interface: l.name, Addrs: *l.addrs.Load(), Local: pktinfoDst(oob[:oobn]),
			Peer: netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()), Proxy: proxy}
		select {
		case s.sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		s.wg.Add(1)
		go func() {
			defer func() {
				<-s.sem
				s.wg.Done()
			}()
			s.answer(ctx, c, req, in, start)
		}()
	}
}

// decode parses a datagram; undecodable ones are counted and dropped.
func (s *Server) decode(b []byte, truncated bool) (req *dhcpv4.DHCPv4, ok bool) {
	defer func() {
		if r := recover(); r != nil { // a decoder bug must not stop the server
			s.log.Error("decoding a request panicked", "panic", r)
			s.m.packet(kindMalformed, resIgnored)
			req, ok = nil, false
		}
	}()
	if truncated {
		s.m.packet(kindMalformed, resIgnored)
		return nil, false
	}
	req, err := dhcpv4.FromBytes(b)
	if err != nil {
		s.m.packet(kindMalformed, resIgnored)
		if s.debug {
			s.log.Debug("undecodable request", "err", err)
		}
		return nil, false
	}
	return req, true
}

// answer handles a request and sends the reply on the socket it came in.
func (s *Server) answer(ctx context.Context, c *net.UDPConn, req *dhcpv4.DHCPv4, in Arrival, start time.Time) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("handling a request panicked", "panic", r, "mac", req.ClientHWAddr.String())
			s.m.packet(kindOther, resError)
		}
	}()
	reply, dst := s.Handle(ctx, req, in)
	if reply == nil {
		return
	}
	if _, err := c.WriteToUDPAddrPort(reply.ToBytes(), dst); err != nil {
		s.log.Warn("send reply", "interface", in.Interface, "dst", dst.String(), "err", err)
		return
	}
	s.m.response.Observe(time.Since(start).Seconds())
}
