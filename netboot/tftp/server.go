package tftp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path"
	"sync"
	"time"

	"github.com/pin/tftp/v3"
)

// Options configure a Server. Zero values take the defaults.
type Options struct {
	Root         string        // directory served; default /usr/lib/ipxe
	Addr         string        // UDP listen address; default ":69"
	MaxTransfers int           // concurrent reads; default 64; beyond it requests are refused (busy)
	Timeout      time.Duration // wait for one acknowledgement; default pin/tftp's 5s
	Retries      int           // sends of one packet before giving up; default pin/tftp's 5
	// MaxPerPeer caps the concurrent reads from one source address
	// (default 4); beyond it that address is refused with "too many
	// transfers from your address" while other peers are served.
	MaxPerPeer int
	// FirstBlockTimeout is how long after its request a transfer may go
	// before its first data block (and OACK, if any) is acknowledged
	// (default 2s). Past it the transfer gives its slots back at once; a
	// late acknowledgement takes a slot again if one is free, else the
	// transfer is cut. Timeout and Retries still govern transfers under
	// way.
	FirstBlockTimeout time.Duration
}

// Defaults of Options.
const (
	DefaultRoot         = "/usr/lib/ipxe"
	DefaultAddr         = ":69"
	DefaultMaxTransfers = 64
	DefaultMaxPerPeer   = 4
	DefaultFirstBlock   = 2 * time.Second
)

// pendingFactor bounds the requests whose handler is still running, slots
// given back or not, at pendingFactor×MaxTransfers: a transfer whose first
// block timed out no longer holds a slot, but pin/tftp keeps resending it
// for Timeout×Retries and there is no way to stop that early. Beyond the
// bound requests are refused as busy.
const pendingFactor = 4

// drainTimeout bounds how long Run lets transfers in progress finish after
// its context ends, before it cuts them: 1 s, so that the rack stops within
// 2 s of SIGTERM (iPXE retries a cut transfer).
const drainTimeout = time.Second

// Event is the outcome of one read or write request.
type Event struct {
	Time   time.Time // when the request arrived
	File   string    // the name as requested
	Peer   netip.AddrPort
	Bytes  int64  // file bytes sent
	Result string // ok, not_found, denied, error or busy
	Err    string // why, when Result is not ok
}

// Server is a read-only TFTP server over one directory.
type Server struct {
	opts    Options
	root    *os.Root
	conn    *net.UDPConn
	srv     *tftp.Server
	slots   chan struct{}
	pending chan struct{} // handlers running, slots given back or not
	peersMu sync.Mutex
	peers   map[netip.Addr]int // transfers holding a slot, by source address
	metrics *Metrics
	onEvent func(Event)
	log     *slog.Logger
	drain   time.Duration // drainTimeout; shorter in tests

	// transfers is cancelled when the drain after Run's context ends is
	// over: file reads of transfers still running then fail.
	transfers context.Context
	cut       context.CancelFunc
}

// New opens the root and binds the listener; Run serves it. m, onEvent and
// log may be nil.
func New(o Options, m *Metrics, onEvent func(Event), log *slog.Logger) (*Server, error) {
	if o.Root == "" {
		o.Root = DefaultRoot
	}
	if o.Addr == "" {
		o.Addr = DefaultAddr
	}
	if o.MaxTransfers <= 0 {
		o.MaxTransfers = DefaultMaxTransfers
	}
	if o.MaxPerPeer <= 0 {
		o.MaxPerPeer = DefaultMaxPerPeer
	}
	if o.FirstBlockTimeout <= 0 {
		o.FirstBlockTimeout = DefaultFirstBlock
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	root, err := os.OpenRoot(o.Root)
	if err != nil {
		return nil, fmt.Errorf("tftp root: %w", err)
	}
	ua, err := net.ResolveUDPAddr("udp", o.Addr)
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("tftp listen address %q: %w", o.Addr, err)
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("tftp listen on %s: %w", o.Addr, err)
	}
	s := &Server{
		opts:    o,
		root:    root,
		conn:    conn,
		slots:   make(chan struct{}, o.MaxTransfers),
		pending: make(chan struct{}, pendingFactor*o.MaxTransfers),
		peers:   map[netip.Addr]int{},
		metrics: m,
		onEvent: onEvent,
		log:     log.With("component", "tftp"),
		drain:   drainTimeout,
	}
	s.transfers, s.cut = context.WithCancel(context.Background())
	s.srv = tftp.NewServer(s.read, s.write)
	s.srv.SetTimeout(o.Timeout)
	s.srv.SetRetries(o.Retries)
	return s, nil
}

// Addr is the bound listen address (useful when Options.Addr has port 0).
func (s *Server) Addr() netip.AddrPort {
	return s.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Run serves until ctx ends, then stops accepting requests, lets the
// transfers in progress finish for a few seconds, cuts the rest and
// returns. It closes the listener and the root; a Server runs once.
func (s *Server) Run(ctx context.Context) error {
	defer s.root.Close()
	defer s.cut()
	s.log.Info("tftp serving", "addr", s.Addr().String(), "root", s.opts.Root, "max_transfers", s.opts.MaxTransfers,
		"max_per_peer", s.opts.MaxPerPeer, "first_block_timeout", s.opts.FirstBlockTimeout.String())
	served := make(chan error, 1)
	go func() { served <- s.srv.Serve(s.conn) }()

	var err error
	select {
	case <-ctx.Done():
	case err = <-served:
		// Serve only returns on its own when it cannot start.
		s.conn.Close()
		s.cut()
		s.srv.Shutdown()
		return fmt.Errorf("tftp serve on %s: %w", s.Addr(), err)
	}

	drain, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.drain)
	defer cancel()
	stopped := make(chan struct{})
	go func() {
		// Shutdown closes the listener and waits for every transfer; each
		// ends by itself, when its file reads fail after cut, or after
		// Timeout×Retries without an acknowledgement.
		s.srv.Shutdown()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-drain.Done():
		s.log.Warn("tftp transfers still running after the drain; cutting them", "drain", s.drain.String())
		s.cut()
		<-stopped
	}
	s.conn.Close()
	if err := <-served; err != nil {
		return fmt.Errorf("tftp serve on %s: %w", s.Addr(), err)
	}
	s.log.Info("tftp stopped")
	return nil
}

// read serves a read request. An error returned here is sent to the client
// as an error packet by pin/tftp.
func (s *Server) read(name string, rf io.ReaderFrom) error {
	start := time.Now()
	ev := Event{Time: start, File: name, Result: ResultOK}
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		ev.Peer = peer(ot.RemoteAddr())
	}
	label := otherFile
	started := false
	defer func() {
		s.metrics.observe(label, ev.Result, ev.Bytes, time.Since(start), started)
		l := s.log.With("file", name, "peer", ev.Peer.String(), "result", ev.Result, "bytes", ev.Bytes)
		switch ev.Result {
		case ResultOK:
			l.Debug("tftp transfer done", "seconds", time.Since(start).Seconds())
		case ResultNotFound:
			l.Debug("tftp file not found")
		default:
			l.Info("tftp request failed", "err", ev.Err)
		}
		if s.onEvent != nil {
			s.onEvent(ev)
		}
	}()
	fail := func(result string, err error) error {
		ev.Result, ev.Err = result, err.Error()
		return err
	}

	f, size, err := s.open(name)
	switch {
	case errors.Is(err, errDenied):
		s.refuse(rf, 2, "access violation")
		return fail(ResultDenied, err)
	case errors.Is(err, fs.ErrNotExist):
		return fail(ResultNotFound, errors.New("file not found"))
	case err != nil:
		return fail(ResultError, errors.New("cannot read file"))
	}
	defer f.Close()
	label = path.Base(f.Name())

	select {
	case s.pending <- struct{}{}:
		defer func() { <-s.pending }()
	default:
		s.metrics.refused(RefusedBusy)
		return fail(ResultBusy, fmt.Errorf("server busy (%d requests pending), try again", cap(s.pending)))
	}
	slot, err := s.acquire(ev.Peer.Addr())
	if err != nil {
		if errors.Is(err, errPeerLimit) {
			s.refuse(rf, 0, errPeerLimit.Error())
			return fail(ResultPeerLimit, err)
		}
		return fail(ResultBusy, err)
	}

	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		ot.SetSize(size) // answers the tsize option
	}
	started = true
	fr := &firstBlockReader{cutReader: cutReader{ctx: s.transfers, r: f}, srv: s, peer: ev.Peer.Addr(), slot: slot}
	fr.timer = time.AfterFunc(s.opts.FirstBlockTimeout, fr.expire)
	defer fr.done()
	n, err := rf.ReadFrom(fr)
	ev.Bytes = n
	if err != nil && fr.timedOut() {
		ev.Result, ev.Err = ResultError, fmt.Sprintf("first block not acknowledged within %s, and no slot free when it was: %v", s.opts.FirstBlockTimeout, err)
		return nil
	}
	if err != nil {
		// pin/tftp has already aborted the transfer (or the client did).
		ev.Result, ev.Err = ResultError, err.Error()
		return nil
	}
	return nil
}

// errPeerLimit is the refusal sent to a source address that already holds
// MaxPerPeer transfers.
var errPeerLimit = errors.New("too many transfers from your address")

// slot is a transfer's share of the global and per-peer limits; release
// gives it back once (at the first-block timeout or at the end).
type slot struct {
	s    *Server
	addr netip.Addr
	once sync.Once
}

// acquire takes a per-peer slot for addr, then a global one. Errors wrap
// errPeerLimit or say the server is busy; refusals are counted.
func (s *Server) acquire(addr netip.Addr) (*slot, error) {
	s.peersMu.Lock()
	if s.peers[addr] >= s.opts.MaxPerPeer {
		s.peersMu.Unlock()
		s.metrics.refused(RefusedPeerLimit)
		return nil, fmt.Errorf("%w (%d)", errPeerLimit, s.opts.MaxPerPeer)
	}
	s.peers[addr]++
	s.peersMu.Unlock()
	select {
	case s.slots <- struct{}{}:
		return &slot{s: s, addr: addr}, nil
	default:
		s.dropPeer(addr)
		s.metrics.refused(RefusedBusy)
		return nil, fmt.Errorf("server busy (%d transfers), try again", s.opts.MaxTransfers)
	}
}

func (s *Server) dropPeer(addr netip.Addr) {
	s.peersMu.Lock()
	defer s.peersMu.Unlock()
	if s.peers[addr]--; s.peers[addr] <= 0 {
		delete(s.peers, addr)
	}
}

func (sl *slot) release() {
	sl.once.Do(func() {
		<-sl.s.slots
		sl.s.dropPeer(sl.addr)
	})
}

// firstBlockReader watches for the acknowledgement of the first data
// block: pin/tftp reads the file a block at a time (io.ReadFull) and reads
// past the first full block only once that block is acknowledged. If that
// has not happened when the timer fires, the transfer gives its slot back.
// Should the acknowledgement come later (a lost packet on a slow link), the
// transfer takes a slot again if one is free and goes on; if none is, the
// read fails and pin/tftp aborts the transfer.
type firstBlockReader struct {
	cutReader
	srv   *Server
	peer  netip.Addr
	timer *time.Timer

	mu      sync.Mutex
	slot    *slot // nil while the transfer holds none
	full    bool  // a read has filled its buffer: the next read means the block was acknowledged
	acked   bool
	expired bool // the first-block timeout passed before the acknowledgement
}

func (r *firstBlockReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	if r.full && !r.acked {
		r.acked = true
		r.timer.Stop()
	}
	if r.slot == nil {
		sl, err := r.srv.acquire(r.peer)
		if err != nil {
			r.mu.Unlock()
			return 0, fmt.Errorf("first block acknowledged after the slot was given back: %w", err)
		}
		r.slot = sl
	}
	r.mu.Unlock()
	n, err := r.cutReader.Read(p)
	if n == len(p) && n > 0 {
		r.mu.Lock()
		r.full = true
		r.mu.Unlock()
	}
	return n, err
}

func (r *firstBlockReader) expire() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.acked || r.slot == nil {
		return
	}
	r.expired = true
	r.slot.release()
	r.slot = nil
	s := r.srv
	s.metrics.refused(RefusedFirstBlock)
	s.log.Info("tftp first block not acknowledged in time; slot given back", "peer", r.peer.String(), "timeout", s.opts.FirstBlockTimeout.String())
}

// done stops the timer and gives back the slot the transfer holds.
func (r *firstBlockReader) done() {
	r.timer.Stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.slot != nil {
		r.slot.release()
		r.slot = nil
	}
}

func (r *firstBlockReader) timedOut() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.expired
}

// open opens a regular file under the root. Errors wrap errDenied,
// fs.ErrNotExist or are others.
func (s *Server) open(name string) (*os.File, int64, error) {
	c, err := cleanName(name)
	if err != nil {
		return nil, 0, err
	}
	// Stat first so a FIFO or device is never opened (that could block).
	fi, err := s.root.Stat(c)
	if err != nil {
		return nil, 0, rootErr(err)
	}
	if !fi.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("%s is not a regular file: %w", c, errDenied)
	}
	f, err := s.root.Open(c)
	if err != nil {
		return nil, 0, rootErr(err)
	}
	fi, err = f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("%s is not a regular file: %w", c, errDenied)
	}
	return f, fi.Size(), nil
}

// rootErr classifies an error of os.Root: a missing file is not_found;
// anything else (an escape through a symlink, a permission) is denied.
func rootErr(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return fmt.Errorf("%w: %w", errDenied, err)
}

// write refuses every write request with an access violation.
func (s *Server) write(name string, wt io.WriterTo) error {
	ev := Event{Time: time.Now(), File: name, Result: ResultDenied, Err: "write requests are refused: read-only server"}
	if it, ok := wt.(tftp.IncomingTransfer); ok {
		ev.Peer = peer(it.RemoteAddr())
	}
	s.refuse(wt, 2, "access violation: read-only server")
	s.metrics.observe(otherFile, ResultDenied, 0, 0, false)
	s.log.Info("tftp write refused", "file", name, "peer", ev.Peer.String())
	if s.onEvent != nil {
		s.onEvent(ev)
	}
	return errors.New(ev.Err)
}

// refuse sends an error packet with the given code (pin/tftp's own error
// packets always carry code 1, file not found) from a new port on the
// address the request came to. The client takes it as the server's answer;
// pin/tftp's own error packet, which follows from another port, is then
// ignored or answered with "unknown transfer ID".
func (s *Server) refuse(t any, code uint16, msg string) {
	type peer interface {
		RemoteAddr() net.UDPAddr
		LocalIP() net.IP
	}
	p, ok := t.(peer)
	if !ok {
		return
	}
	remote := p.RemoteAddr()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: p.LocalIP()})
	if err != nil {
		s.log.Debug("tftp error packet not sent", "err", err)
		return
	}
	defer conn.Close()
	pkt := make([]byte, 0, 5+len(msg))
	pkt = binary.BigEndian.AppendUint16(pkt, 5) // ERROR
	pkt = binary.BigEndian.AppendUint16(pkt, code)
	pkt = append(pkt, msg...)
	pkt = append(pkt, 0)
	if _, err := conn.WriteToUDP(pkt, &remote); err != nil {
		s.log.Debug("tftp error packet not sent", "err", err)
	}
}

// peer is a client's address with IPv4 unmapped (net.UDPAddr often holds
// IPv4 in 16 bytes).
func peer(ua net.UDPAddr) netip.AddrPort {
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// cutReader fails reads once ctx ends, so a transfer stops at its next
// block when the server's drain is over.
type cutReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *cutReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, fmt.Errorf("server shutting down: %w", err)
	}
	return c.r.Read(p)
}
