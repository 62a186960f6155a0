package boot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
	"gopkg.in/yaml.v3"
)

// The deployed OS reports in once it has booted from its disk and
// cloud-init has run: the deploy's vendor-data turns on cloud-init's
// phone_home module, which runs once per instance after the user's runcmd
// and POSTs instance_id, hostname and fqdn as a form to
// /os/{machine}/report. phone_home cannot send headers, so its token rides
// in the URL; it is a token of its own (not the boot token), minted when
// the deploy's vendor-data is served, valid for OSTokenTTL, used once, and
// gone with the next network boot of the machine.

// MaxOSReportBytes bounds an OS report's body.
const MaxOSReportBytes = 16 << 10

// vendorData renders the deploy's vendor-data: phone_home with a fresh OS
// report-in token, or an empty #cloud-config for images that do not
// confirm their deploys (confirm: none) and for other purposes.
func (s *Server) vendorData(ctx context.Context, base string, m *spec.Machine) ([]byte, error) {
	empty := []byte("#cloud-config\n{}\n")
	img, ok := s.backend.Image(m.Spec.Image)
	if !ok || img.Spec.Disk == nil || !img.Spec.ConfirmsByOS() {
		return empty, nil
	}
	if p, err := s.backend.Purpose(ctx, m.Metadata.Name); err != nil {
		return nil, fmt.Errorf("boot purpose: %w", err)
	} else if p != agentapi.PurposeDeploy {
		return empty, nil // only a deployment's seed carries a report-in token
	}
	token, sum, err := newSecret()
	if err != nil {
		return nil, err
	}
	expires := s.opts.Now().Add(s.opts.OSTokenTTL)
	err = s.backend.Tokens().Update(ctx, m.Metadata.Name, func(t *inventory.BootToken) error {
		t.OSSHA256, t.OSExpires = sum, expires
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store the OS report-in token: %w", err)
	}
	return VendorData(base, m.Metadata.Name, token)
}

// VendorData is the #cloud-config that makes the deployed OS report in.
func VendorData(base, machine, token string) ([]byte, error) {
	type phoneHome struct {
		URL   string   `yaml:"url"`
		Post  []string `yaml:"post"`
		Tries int      `yaml:"tries"`
	}
	b, err := yaml.Marshal(struct {
		PhoneHome phoneHome `yaml:"phone_home"`
	}{phoneHome{
		URL:   base + "/os/" + url.PathEscape(machine) + "/report?token=" + url.QueryEscape(token),
		Post:  []string{"instance_id", "hostname", "fqdn"},
		Tries: 20,
	}})
	if err != nil {
		return nil, err
	}
	return append([]byte("#cloud-config\n"), b...), nil
}

// osReport serves POST /os/{machine}/report.
func (s *Server) osReport(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("machine")
	if !validName(name) || spec.IsDiscovered(name) {
		http.Error(w, fmt.Sprintf("%q is not a machine name", name), http.StatusNotFound)
		return
	}
	log := s.log.With("machine", name, "remote", r.RemoteAddr)
	stored, ok := s.checkOSToken(w, r, name, log)
	if !ok || !s.checkOSAddress(w, r, name, log) {
		return
	}
	rep, ok := readOSReport(w, r)
	if !ok {
		return
	}
	if err := s.backend.Report(r.Context(), name, agentapi.Report{OS: rep, TaskID: stored.TaskID, BootID: stored.BootID}); err != nil {
		log.Error("store OS report", "err", err)
		http.Error(w, "cannot store the report, try again", http.StatusServiceUnavailable)
		return
	}
	s.retireOSToken(r.Context(), name, stored, log)
	s.backend.Record(name, EventOS, rep.Hostname)
	log.Info("deployed OS reported in", "hostname", rep.Hostname, "boot_id", rep.BootID)
	w.WriteHeader(http.StatusNoContent)
}

// checkOSToken checks the OS report-in token (in the URL, or a bearer
// token) against the machine's stored one, and returns that record; false
// when it answered an error.
func (s *Server) checkOSToken(w http.ResponseWriter, r *http.Request, name string, log *slog.Logger) (inventory.BootToken, bool) {
	given := r.URL.Query().Get("token")
	if h := r.Header.Get("Authorization"); h != "" {
		if scheme, tok, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
			given = strings.TrimSpace(tok)
		}
	}
	stored, err := s.backend.Tokens().Get(r.Context(), name)
	switch {
	case err != nil && !errors.Is(err, inventory.ErrNotFound):
		log.Error("check OS report-in token", "err", err)
		http.Error(w, "token store unavailable, try again", http.StatusServiceUnavailable)
		return stored, false
	case err != nil, given == "", stored.OSSHA256 == "", !matches(given, stored.OSSHA256):
		log.Warn("OS report refused: no valid OS report-in token")
		http.Error(w, "forbidden: a valid OS report-in token for this machine is required", http.StatusForbidden)
		return stored, false
	case !s.opts.Now().Before(stored.OSExpires):
		log.Warn("OS report refused: token expired", "expired", stored.OSExpires)
		http.Error(w, "forbidden: the OS report-in token expired", http.StatusForbidden)
		return stored, false
	}
	return stored, true
}

// checkOSAddress accepts a report only from one of the machine's declared
// or leased addresses; false when it answered 403.
func (s *Server) checkOSAddress(w http.ResponseWriter, r *http.Request, name string, log *slog.Logger) bool {
	from := remoteAddr(r)
	m, known := s.backend.Machine(name)
	allowed := false
	if known && from.IsValid() {
		for _, a := range s.machineAddrs(m) {
			allowed = allowed || a == from
		}
	}
	if !allowed {
		why := fmt.Sprintf("OS report from %s, not one of the machine's declared or leased addresses", from)
		log.Warn("OS report refused", "why", why)
		if known {
			s.backend.Record(name, EventRefused, why)
		}
		http.Error(w, "forbidden: OS reports are accepted only from the machine's own addresses", http.StatusForbidden)
	}
	return allowed
}

// readOSReport decodes the report (bounded by MaxOSReportBytes) and notes
// the address it came from; false when it answered 400 or 413.
func readOSReport(w http.ResponseWriter, r *http.Request) (*agentapi.OSReport, bool) {
	rep, err := decodeOSReport(r.Header.Get("Content-Type"), http.MaxBytesReader(w, r.Body, MaxOSReportBytes))
	if err != nil {
		code := http.StatusBadRequest
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			code = http.StatusRequestEntityTooLarge
		}
		http.Error(w, err.Error(), code)
		return nil, false
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		rep.Address = host
	}
	return rep, true
}

// retireOSToken makes the OS report-in token single-use: a second report
// with it is refused. The deploy has ended, so its boot token (in the
// CIDATA seed) is revoked too. A failure is only logged: the report is
// stored.
func (s *Server) retireOSToken(ctx context.Context, name string, stored inventory.BootToken, log *slog.Logger) {
	err := s.backend.Tokens().Update(ctx, name, func(t *inventory.BootToken) error {
		if t.OSSHA256 == stored.OSSHA256 {
			t.OSSHA256 = ""
			if t.BootID == stored.BootID {
				t.SHA256 = ""
			}
		}
		return nil
	})
	if err != nil {
		log.Warn("could not retire the OS report-in token", "err", err)
	}
}

var (
	hostnameRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$`)
	instanceIDRE = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)
	bootIDRE     = regexp.MustCompile(`^[0-9a-fA-F-]{1,64}$`)
)

// decodeOSReport reads a phone_home form or a JSON report and checks
// every field; unknown form fields (phone_home's public keys) are dropped.
func decodeOSReport(contentType string, body io.Reader) (*agentapi.OSReport, error) {
	mt, _, _ := mime.ParseMediaType(contentType)
	raw, err := io.ReadAll(body)
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	var rep agentapi.OSReport
	switch mt {
	case "application/x-www-form-urlencoded", "":
		v, err := url.ParseQuery(string(raw))
		if err != nil {
			return nil, fmt.Errorf("form: %w", err)
		}
		rep = agentapi.OSReport{Hostname: v.Get("hostname"), FQDN: v.Get("fqdn"), InstanceID: v.Get("instance_id"), BootID: v.Get("boot_id")}
	case "application/json":
		if err := decodeStrict(raw, &rep); err != nil {
			return nil, fmt.Errorf("OS report: %w", err)
		}
	default:
		return nil, fmt.Errorf("send application/x-www-form-urlencoded or application/json, not %s", mt)
	}
	for _, f := range []struct {
		name, v string
		re      *regexp.Regexp
		max     int
	}{
		{"hostname", rep.Hostname, hostnameRE, 253},
		{"fqdn", rep.FQDN, hostnameRE, 253},
		{"instance_id", rep.InstanceID, instanceIDRE, 128},
		{"boot_id", rep.BootID, bootIDRE, 64},
	} {
		if f.v != "" && (len(f.v) > f.max || !f.re.MatchString(f.v)) {
			return nil, fmt.Errorf("%s: %q is not valid", f.name, truncate(f.v, 64))
		}
	}
	if rep.Hostname == "" && rep.InstanceID == "" {
		return nil, errors.New("an OS report needs at least hostname or instance_id")
	}
	return &rep, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
