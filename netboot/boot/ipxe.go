package boot

import (
	"fmt"
	"net"
	"net/http"
	"path"
	"strings"

	"github.com/kilnhq/kiln/spec"
)

// script serves GET /boot/{mac}/script.ipxe.
func (s *Server) script(w http.ResponseWriter, r *http.Request) {
	hw, err := net.ParseMAC(r.PathValue("mac"))
	if err != nil || len(hw) != 6 {
		http.Error(w, fmt.Sprintf("%q is not a MAC address (aa:bb:cc:dd:ee:ff)", r.PathValue("mac")), http.StatusBadRequest)
		return
	}
	mac := hw.String()
	log := s.log.With("mac", mac)
	name, purpose, arch := discoveredName(mac), PurposeDiscover, "amd64"
	if m, ok := s.backend.MachineByMAC(mac); ok {
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
	switch {
	case purpose == PurposeLocal:
		body = localScript
	case purpose == PurposeOff:
		body = "#!ipxe\necho kiln: " + name + " is to stay off\npoweroff\n"
	case ephemeral(purpose):
		img, ok := s.backend.EphemeralImage(arch)
		if !ok || img.Spec.Kernel == nil || img.Spec.Initrd == nil {
			log.Error("no ephemeral image", "arch", arch)
			http.Error(w, "no ephemeral image for arch "+arch, http.StatusServiceUnavailable)
			return
		}
		token, bootID, err := s.issueToken(r.Context(), name)
		if err != nil {
			log.Error("issue boot token", "err", err)
			http.Error(w, "cannot issue a boot token, try again", http.StatusServiceUnavailable)
			return
		}
		log = log.With("boot_id", bootID)
		body = ephemeralScript(base, name, purpose, token, mac, img)
	default:
		log.Error("unknown boot purpose")
		http.Error(w, fmt.Sprintf("unknown boot purpose %q", purpose), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte(body))
	detail := purpose
	if uuid := r.URL.Query().Get("uuid"); uuid != "" && len(uuid) <= 64 {
		detail += " uuid=" + uuid
	}
	s.backend.Record(name, EventScript, detail)
	log.Info("served iPXE script")
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
func ephemeralScript(base, machine, purpose, token, mac string, img *spec.Image) string {
	initrdName := artifactName(img.Spec.Initrd)
	args := []string{}
	if c := strings.TrimSpace(img.Spec.Cmdline); c != "" {
		args = append(args, strings.Join(strings.Fields(c), " "))
	}
	args = append(args,
		"kiln.url="+base,
		"kiln.machine="+machine,
		"kiln.purpose="+purpose,
		"kiln.token="+token,
		"initrd="+initrdName,
	)
	var b strings.Builder
	b.WriteString("#!ipxe\n")
	fmt.Fprintf(&b, "echo kiln: %s, purpose %s\n", machine, purpose)
	fmt.Fprintf(&b, "kernel %s %s || goto failed\n", CacheURL(base, img.Spec.Kernel), strings.Join(args, " "))
	fmt.Fprintf(&b, "initrd %s || goto failed\n", CacheURL(base, img.Spec.Initrd))
	b.WriteString("boot || goto failed\n")
	b.WriteString(":failed\n")
	b.WriteString("echo kiln: boot failed, trying again in 10 seconds\n")
	b.WriteString("sleep 10\n")
	fmt.Fprintf(&b, "chain --replace --autofree %s/boot/%s/script.ipxe\n", base, mac)
	return b.String()
}
