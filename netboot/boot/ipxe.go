package boot

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/netboot/ratelimit"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// scriptFetch is one request for an iPXE script, as the steps of
// Server.script see it.
type scriptFetch struct {
	mac     string     // lower-case, colon-separated
	from    netip.Addr // the address the request came from
	name    string     // the machine, or its discovered name
	purpose string
	arch    string
	known   bool // the MAC belongs to an inventory machine
	log     *slog.Logger
}

// script serves GET /boot/{mac}/script.ipxe.
func (s *Server) script(w http.ResponseWriter, r *http.Request) {
	hw, err := net.ParseMAC(r.PathValue("mac"))
	if err != nil || len(hw) != 6 {
		http.Error(w, fmt.Sprintf("%q is not a MAC address (aa:bb:cc:dd:ee:ff)", r.PathValue("mac")), http.StatusBadRequest)
		return
	}
	f := &scriptFetch{mac: hw.String(), from: remoteAddr(r)}
	f.log = s.log.With("mac", f.mac, "remote", f.from)
	if s.scriptRateLimited(w, f) {
		return
	}
	if !s.identify(w, r, f) {
		return
	}
	var body, detail string
	switch {
	case f.purpose == agentapi.PurposeLocal:
		body, detail = localScript, f.purpose
	case f.purpose == agentapi.PurposeOff:
		body, detail = "#!ipxe\necho kiln: "+f.name+" is to stay off\npoweroff\n", f.purpose
	case agentapi.Ephemeral(f.purpose):
		var ok bool
		if body, detail, ok = s.ephemeralBody(w, r, f); !ok {
			return
		}
	default:
		f.log.Error("unknown boot purpose")
		http.Error(w, fmt.Sprintf("unknown boot purpose %q", f.purpose), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte(body))
	if uuid := r.URL.Query().Get("uuid"); uuid != "" && len(uuid) <= 64 && validName(uuid) {
		detail += " uuid=" + uuid
	}
	s.backend.Record(f.name, EventScript, detail)
	f.log.Info("served iPXE script")
}

// scriptRateLimited answers 429 with Retry-After when the source address
// or the MAC fetches scripts too fast.
func (s *Server) scriptRateLimited(w http.ResponseWriter, f *scriptFetch) bool {
	now := time.Now()
	for _, l := range []struct {
		lim *ratelimit.Keyed
		key string
	}{{s.perIP, f.from.String()}, {s.perMAC, f.mac}} {
		if ok, wait := l.lim.Allow(l.key, now); !ok {
			secs := int(wait/time.Second) + 1
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			f.log.Debug("script request rate-limited", "retry_after", secs)
			http.Error(w, "too many boot script requests, try again later", http.StatusTooManyRequests)
			return true
		}
	}
	return false
}

// identify sets the machine, its purpose and arch: an unknown MAC is
// discovered on amd64. False when the purpose cannot be read (answered
// 503).
func (s *Server) identify(w http.ResponseWriter, r *http.Request, f *scriptFetch) bool {
	f.name, f.purpose, f.arch = spec.DiscoveredName(f.mac), agentapi.PurposeDiscover, "amd64"
	m, known := s.backend.MachineByMAC(f.mac)
	if known {
		var err error
		f.known, f.name, f.arch = true, m.Metadata.Name, m.Spec.Arch
		f.purpose, err = s.backend.Purpose(r.Context(), f.name)
		if err != nil {
			f.log.Error("boot purpose", "machine", f.name, "err", err)
			http.Error(w, "cannot tell what this machine should do now, try again", http.StatusServiceUnavailable)
			return false
		}
	}
	f.log = f.log.With("machine", f.name, "purpose", f.purpose)
	return true
}

// ephemeralBody is the script of an ephemeral purpose: the ephemeral
// image with a fresh boot token, or a script that says why this fetch
// gets no token. False when it answered an error instead.
func (s *Server) ephemeralBody(w http.ResponseWriter, r *http.Request, f *scriptFetch) (body, detail string, ok bool) {
	img, found := s.backend.EphemeralImage(f.arch)
	if !found || img.Spec.Kernel == nil || img.Spec.Initrd == nil {
		f.log.Error("no ephemeral image", "arch", f.arch)
		http.Error(w, "no ephemeral image for arch "+f.arch, http.StatusServiceUnavailable)
		return "", "", false
	}
	leased, hasLease := s.backend.LeaseIP(f.mac)
	if hasLease && leased.Unmap() != f.from {
		why := fmt.Sprintf("script fetched from %s, but Kiln's DHCP gave %s to %s: no token", f.from, leased, f.mac)
		f.log.Warn("boot script without a token", "why", why)
		if f.known {
			s.backend.Record(f.name, EventRefused, why)
		}
		return noTokenScript(f.name, why), f.purpose + " without token", true
	}
	token, rec, why, ok := s.scriptToken(w, r, f)
	if !ok {
		return "", "", false
	}
	if why != "" {
		f.log.Warn("boot script without a token", "why", why)
		s.backend.Record(f.name, EventRefused, why)
		return noTokenScript(f.name, why), f.purpose + " without token", true
	}
	if !hasLease && f.known {
		s.backend.Record(f.name, EventBound, "no DHCP lease known (proxyDHCP): token bound to the first fetcher, "+f.from.String())
	}
	f.log = f.log.With("boot_id", rec.BootID, "task", rec.TaskID)
	return ephemeralScript(s.baseURL(r), s.agentURL(r), f.name, f.purpose, token, img), f.purpose, true
}

// scriptToken issues the fetch its boot token: a known machine claims the
// one its power task prepared, an unknown MAC gets a discovered one. why
// says why a refused fetch gets none; false when it answered an error.
func (s *Server) scriptToken(w http.ResponseWriter, r *http.Request, f *scriptFetch) (token string, rec inventory.BootToken, why string, ok bool) {
	var err error
	if f.known {
		token, rec, err = s.claimToken(r.Context(), f.name, f.from)
	} else {
		token, rec, err = s.discoveredToken(r.Context(), f.mac, f.name, f.from)
	}
	switch {
	case errors.Is(err, ErrDiscoveryFull):
		f.log.Warn("unknown MAC refused: discovery cap reached", "err", err)
		http.Error(w, "this rack records no more unknown machines (discovered machines cap reached); add the machine to the inventory or clear discovered ones", http.StatusServiceUnavailable)
		return "", rec, "", false
	case errors.Is(err, errHandedOut):
		why = "token already handed out to " + rec.Address
	case errors.Is(err, inventory.ErrNotFound):
		why = "no power task for this boot (a second boot needs a new power task)"
	case err != nil:
		f.log.Error("issue boot token", "err", err)
		http.Error(w, "cannot issue a boot token, try again", http.StatusServiceUnavailable)
		return "", rec, "", false
	}
	return token, rec, why, true
}

// noTokenScript tells why this fetch gets no token and exits to the next
// boot device.
func noTokenScript(machine, why string) string {
	return "#!ipxe\necho kiln: " + machine + ": no boot token for this fetch: " + ipxeSafe(why) + "\nsleep 5\nexit 1\n"
}

// ipxeSafe keeps the characters that cannot start iPXE expansions or
// commands.
func ipxeSafe(s string) string {
	return strings.Map(func(c rune) rune {
		if c == '$' || c == '{' || c == '}' || c == '\n' || c == '\r' || c == '|' || c == '&' || c == '#' {
			return ' '
		}
		return c
	}, s)
}

// localScript falls through to the local disk: UEFI iPXE returns to the
// firmware's next boot entry with exit; BIOS iPXE boots the first disk.
const localScript = `#!ipxe
echo kiln: booting from the local disk
iseq ${platform} efi && goto efi ||
sanboot --no-describe --drive 0x80 || exit
:efi
exit
`

// CacheURL is the URL of an artifact in the rack's image cache.
func CacheURL(base string, a *spec.Artifact) string {
	return base + "/images/sha256/" + a.SHA256 + "/" + artifactName(a)
}

// artifactName is the file name of an artifact's URL, reduced to safe
// characters (it appears in the iPXE script and the kernel command line).
func artifactName(a *spec.Artifact) string {
	u := a.URL
	if i := strings.IndexAny(u, "?#"); i >= 0 {
		u = u[:i]
	}
	n := path.Base(u)
	ok := n != "" && n != "." && n != "/" && n != ".."
	for _, c := range n {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			ok = false
			break
		}
	}
	if !ok {
		return "file"
	}
	return n
}

// ephemeralScript boots the ephemeral image from the image cache. UEFI
// iPXE needs initrd=<name> on the command line to hand the initrd over.
// The kernel and initrd are retried in place on failure: fetching the
// script again would find the token handed out already.
func ephemeralScript(base, agent, machine, purpose, token string, img *spec.Image) string {
	initrdName := artifactName(img.Spec.Initrd)
	args := []string{}
	if c := strings.TrimSpace(img.Spec.Cmdline); c != "" {
		args = append(args, strings.Join(strings.Fields(c), " "))
	}
	args = append(args,
		"kiln.url="+agent,
		"kiln.machine="+machine,
		"kiln.purpose="+purpose,
		"kiln.token="+token,
		"initrd="+initrdName,
	)
	var b strings.Builder
	b.WriteString("#!ipxe\n")
	fmt.Fprintf(&b, "echo kiln: %s, purpose %s\n", machine, purpose)
	b.WriteString(":retry\n")
	b.WriteString("imgfree\n")
	fmt.Fprintf(&b, "kernel %s %s || goto failed\n", CacheURL(base, img.Spec.Kernel), strings.Join(args, " "))
	fmt.Fprintf(&b, "initrd %s || goto failed\n", CacheURL(base, img.Spec.Initrd))
	b.WriteString("boot || goto failed\n")
	b.WriteString(":failed\n")
	b.WriteString("echo kiln: boot failed, trying the kernel and initrd again in 10 seconds\n")
	b.WriteString("sleep 10\n")
	b.WriteString("goto retry\n")
	return b.String()
}
