package facts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/kilnhq/kiln/spec/agentapi"
	"golang.org/x/sys/unix"
)

// lldpMulticast is the nearest-bridge address LLDP frames are sent to.
var lldpMulticast = net.HardwareAddr{0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e}

// LLDPCollector listens for LLDP frames on each interface for up to Wait
// (an interface is done at its first frame) and reports the neighbours.
type LLDPCollector struct {
	Wait time.Duration
	// Interfaces to listen on; nil: the NICs collected before.
	Interfaces []string
	Log        *slog.Logger
}

// Name implements Collector.
func (LLDPCollector) Name() string { return "lldp" }

// Collect implements Collector. An interface that cannot be listened on
// is logged and skipped; only when none can be is it an error.
func (c LLDPCollector) Collect(ctx context.Context, f *agentapi.Facts) error {
	ifaces := c.Interfaces
	if ifaces == nil {
		for _, n := range f.NICs {
			ifaces = append(ifaces, n.Name)
		}
	}
	if len(ifaces) == 0 {
		return nil
	}
	wait := c.Wait
	if wait <= 0 {
		wait = DefaultLLDPWait
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	found := make([]*agentapi.Neighbor, len(ifaces))
	for i, name := range ifaces {
		wg.Go(func() {
			n, err := ListenLLDP(ctx, name)
			if err != nil {
				if c.Log != nil {
					c.Log.Warn("lldp: cannot listen", "interface", name, "err", err)
				}
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
			found[i] = n
		})
	}
	wg.Wait()
	for _, n := range found {
		if n != nil {
			f.LLDP = append(f.LLDP, *n)
		}
	}
	if len(errs) == len(ifaces) {
		return errors.Join(errs...)
	}
	return nil
}

// ListenLLDP waits on one interface for the first valid LLDP frame until
// ctx ends; it returns nil and no error when none came.
func ListenLLDP(ctx context.Context, ifname string) (*agentapi.Neighbor, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("lldp on %s: %w", ifname, err)
	}
	proto := htons(EtherTypeLLDP)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		return nil, fmt.Errorf("lldp on %s: packet socket: %w", ifname, err)
	}
	file := os.NewFile(uintptr(fd), "lldp-"+ifname) // owns fd; reads go through the poller
	defer file.Close()
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		return nil, fmt.Errorf("lldp on %s: bind: %w", ifname, err)
	}
	mreq := &unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_MULTICAST, Alen: 6}
	copy(mreq.Address[:], lldpMulticast)
	if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, mreq); err != nil {
		return nil, fmt.Errorf("lldp on %s: join %s: %w", ifname, lldpMulticast, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = file.SetReadDeadline(time.Now()) })
	defer stop()
	if ctx.Err() != nil {
		return nil, nil
	}
	buf := make([]byte, 9000)
	for {
		n, err := file.Read(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, nil
			}
			return nil, fmt.Errorf("lldp on %s: read: %w", ifname, err)
		}
		nb, err := ParseLLDP(buf[:n])
		if err != nil {
			continue // not a valid LLDPDU: wait for the next
		}
		nb.Interface, nb.MAC = ifname, ifi.HardwareAddr.String()
		return &nb, nil
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
