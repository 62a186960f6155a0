package boot

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// script serves GET /boot/{mac}/script.ipxe.
func (s *Server) script(w http.ResponseWriter, r *http.Request) {
	hw, err := net.ParseMAC(r.PathValue("mac"))
	if err != nil || len(hw) != 6 {
		http.Error(w, fmt.Sprintf("%q is not a MAC address (aa:bb:cc:dd:ee:ff)", r.PathValue("mac")), http.StatusBadRequest)
		return
	}
	mac := hw.String()
	from := remoteAddr(r)
	log := s.log.With("mac", mac, "remote", from)
	now := time.Now()
	for _, l := range []struct {
		lim *limiters
		key string
	}{{s.perIP, from.String()}, {s.perMAC, mac}} {
		if ok, wait := l.lim.allow(l.key, now); !ok {
			secs := int(wait/time.Second) + 1
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			log.Debug("script request rate-limited", "retry_after", secs)
			http.Error(w, "too many boot script requests, try again later", http.StatusTooManyRequests)
			return
		}
	}
	name, purpose, arch := spec.DiscoveredName(mac), agentapi.PurposeDiscover, "amd64"
	m, known := s.backend.MachineByMAC(mac)
	if known {
		name, arch = m.Metadata.Name, m.Spec.Arch
		purpose, err = s.backend.Purpose(r.Context(), name)
		if err != nil {
			log.Error("boot purpose", "machine", name, "err", err)
			http.Error(w, "cannot tell what this machine should do now, try again", http.StatusServiceUnavailable)
			return
		}
	}
	log = log.With("machine", name, "purpose", purpose)
	base := s.baseURL(r)
	var body string
	detail := purpose
	switch {
	case purpose == agentapi.PurposeLocal:
		body = localScript
	case purpose == agentapi.PurposeOff:
		body = "#!ipxe\necho kiln: " + name + " is to stay off\npoweroff\n"
	case agentapi.Ephemeral(purpose):
		img, ok := s.backend.EphemeralImage(arch)
		if !ok || img.Spec.Kernel == nil || img.Spec.Initrd == nil {
			log.Error("no ephemeral image", "arch", arch)
			http.Error(w, "no ephemeral image for arch "+arch, http.StatusServiceUnavailable)
			return
		}
		leased, hasLease := s.backend.LeaseIP(mac)
		if hasLease && leased.Unmap() != from {
			why := fmt.Sprintf("script fetched from %s, but Kiln's DHCP gave %s to %s: no token", from, leased, mac)
			log.Warn("boot script without a token", "why", why)
			if known {
				s.backend.Record(name, EventRefused, why)
			}
			body, detail = noTokenScript(name, why), purpose+" without token"
			break
		}
		var token string
		var rec inventory.BootToken
		if known {
			token, rec, err = s.claimToken(r.Context(), name, from)
		} else {
			token, rec, err = s.discoveredToken(r.Context(), mac, name, from)
		}
		var why string
		switch {
		case errors.Is(err, ErrDiscoveryFull):
			log.Warn("unknown MAC refused: discovery cap reached", "err", err)
			http.Error(w, "this rack records no more unknown machines (discovered machines cap reached); add the machine to the inventory or clear discovered ones", http.StatusServiceUnavailable)
			return
		case errors.Is(err, errHandedOut):
			why = "token already handed out to " + rec.Address
		case errors.Is(err, inventory.ErrNotFound):
			why = "no power task for this boot (a second boot needs a new power task)"
		case err != nil:
			log.Error("issue boot token", "err", err)
			http.Error(w, "cannot issue a boot token, try again", http.StatusServiceUnavailable)
			return
		}
		if why != "" {
			log.Warn("boot script without a token", "why", why)
			s.backend.Record(name, EventRefused, why)
			body, detail = noTokenScript(name, why), purpose+" without token"
			break
		}
		if !hasLease && known {
			s.backend.Record(name, EventBound, "no DHCP lease known (proxyDHCP): token bound to the first fetcher, "+from.String())
		}
		log = log.With("boot_id", rec.BootID, "task", rec.TaskID)
		body = ephemeralScript(base, s.agentURL(r), name, purpose, token, img)
	default:
		log.Error("unknown boot purpose")
		http.Error(w, fmt.Sprintf("unknown boot purpose %q", purpose), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte(body))
	if uuid := r.URL.Query().Get("uuid"); uuid != "" && len(uuid) <= 64 && validName(uuid) {
		detail += " uuid=" + uuid
	}
	s.backend.Record(name, EventScript, detail)
	log.Info("served iPXE script")
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
