package boot

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/netboot/ratelimit"
	"github.com/kilnhq/kiln/spec/agentapi"
)

// Server is the HTTP boot server.
type Server struct {
	opts    Options
	backend Backend
	metrics *Metrics
	log     *slog.Logger
	mux     *http.ServeMux
	perMAC  *ratelimit.Keyed // script fetches per MAC
	perIP   *ratelimit.Keyed // script fetches per source address
}

// New returns a server; metrics may be nil.
func New(opts Options, backend Backend, metrics *Metrics, log *slog.Logger) *Server {
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = DefaultTokenTTL
	}
	if opts.OSTokenTTL <= 0 {
		opts.OSTokenTTL = DefaultOSTokenTTL
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	opts.BaseURL = strings.TrimSuffix(opts.BaseURL, "/")
	opts.AgentURL = strings.TrimSuffix(opts.AgentURL, "/")
	if opts.ScriptRatePerMAC <= 0 {
		opts.ScriptRatePerMAC = 1
	}
	if opts.ScriptRatePerIP <= 0 {
		opts.ScriptRatePerIP = 10
	}
	if opts.ScriptBurst <= 0 {
		opts.ScriptBurst = 5
	}
	if opts.MaxLimiters <= 0 {
		opts.MaxLimiters = 4096
	}
	s := &Server{opts: opts, backend: backend, metrics: metrics, log: log, mux: http.NewServeMux(),
		perMAC: ratelimit.New(opts.ScriptRatePerMAC, opts.ScriptBurst, opts.MaxLimiters),
		perIP:  ratelimit.New(opts.ScriptRatePerIP, opts.ScriptBurst, opts.MaxLimiters)}
	s.mux.HandleFunc("GET /boot/{mac}/script.ipxe", s.script)
	s.mux.HandleFunc("GET /metadata/{machine}/{file}", s.metadata)
	s.mux.HandleFunc("GET /agent/{machine}/task", s.task)
	s.mux.HandleFunc("POST /agent/{machine}/{what}", s.report)
	s.mux.HandleFunc("POST /os/{machine}/report", s.osReport)
	return s
}

// Handler returns the server's HTTP handler.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		s.mux.ServeHTTP(rec, r)
		if s.metrics != nil {
			kind := requestKind(r.URL.Path)
			s.metrics.requests.WithLabelValues(kind, strconv.Itoa(rec.code)).Inc()
			s.metrics.seconds.WithLabelValues(kind).Observe(time.Since(start).Seconds())
		}
	})
}

func requestKind(path string) string {
	switch {
	case strings.HasPrefix(path, "/boot/"):
		return kindScript
	case strings.HasPrefix(path, "/metadata/"):
		return kindMetadata
	case strings.HasPrefix(path, "/agent/"):
		return kindAgent
	case strings.HasPrefix(path, "/os/"):
		return kindOS
	}
	return kindOther
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// agentURL is the URL the machine agent and the deployed OS reach the
// agent API at.
func (s *Server) agentURL(r *http.Request) string {
	if s.opts.AgentURL != "" {
		return s.opts.AgentURL
	}
	if r.TLS != nil { // reached over the rack's HTTPS listener: stay on it
		return "https://" + safeHost(r.Host)
	}
	return s.baseURL(r)
}

// baseURL is the URL machines reach this server at.
func (s *Server) baseURL(r *http.Request) string {
	if s.opts.BaseURL != "" {
		return s.opts.BaseURL
	}
	return "http://" + safeHost(r.Host)
}

// safeHost keeps a Host header that is a plain host[:port]; anything else
// (it ends up in scripts and kernel command lines) becomes the local
// address.
func safeHost(h string) string {
	if h != "" && len(h) <= 255 && strings.Trim(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]") == "" {
		return h
	}
	return "localhost"
}

// validName reports whether name can be a machine name (or a discovered
// MAC's): lower-case letters, digits, '-' and '.'.
func validName(name string) bool {
	if name == "" || len(name) > 63 {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return name != "." && name != ".."
}

// errHandedOut: the boot's token was already handed out.
var errHandedOut = errors.New("token already handed out")

// newBootID is a random boot ID.
func newBootID() (string, error) {
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", fmt.Errorf("random boot ID: %w", err)
	}
	return hex.EncodeToString(id[:]), nil
}

// claimToken mints the token of machine's pending boot (the record the
// rack wrote for its netboot task), compare-and-swap, bound to addr: only
// the first fetch of a boot gets it. inventory.ErrNotFound when there is
// no record (no power task); errHandedOut (with the record) when it was
// handed out already.
func (s *Server) claimToken(ctx context.Context, machine string, addr netip.Addr) (token string, rec inventory.BootToken, err error) {
	token, sum, err := newSecret()
	if err != nil {
		return "", rec, err
	}
	bootID, err := newBootID()
	if err != nil {
		return "", rec, err
	}
	now := s.opts.Now()
	err = s.backend.Tokens().Update(ctx, machine, func(t *inventory.BootToken) error {
		if t.State != inventory.TokenPending {
			rec = *t
			return errHandedOut
		}
		t.State, t.SHA256, t.BootID, t.Address = inventory.TokenIssued, sum, bootID, addr.String()
		t.IssuedAt, t.Expires = now, now.Add(s.opts.TokenTTL)
		t.OSSHA256, t.OSExpires = "", time.Time{}
		rec = *t
		return nil
	})
	if err != nil {
		return "", rec, err
	}
	return token, rec, nil
}

// discoveredToken mints a token for an unknown MAC, bound to addr, its
// record under the MAC's etcd lease.
func (s *Server) discoveredToken(ctx context.Context, mac, machine string, addr netip.Addr) (string, inventory.BootToken, error) {
	lease, err := s.backend.DiscoveredLease(ctx, mac)
	if err != nil {
		return "", inventory.BootToken{}, err
	}
	token, sum, err := newSecret()
	if err != nil {
		return "", inventory.BootToken{}, err
	}
	bootID, err := newBootID()
	if err != nil {
		return "", inventory.BootToken{}, err
	}
	now := s.opts.Now()
	rec := inventory.BootToken{State: inventory.TokenIssued, Purpose: agentapi.PurposeDiscover, Address: addr.String(),
		SHA256: sum, BootID: bootID, IssuedAt: now, Expires: now.Add(s.opts.TokenTTL)}
	if err := s.backend.Tokens().PutLeased(ctx, machine, rec, lease); err != nil {
		return "", rec, err
	}
	return token, rec, nil
}

// remoteAddr is the request's source address (unmapped); invalid when
// RemoteAddr cannot be parsed.
func remoteAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// newSecret returns a random token and the hex SHA-256 that is stored.
func newSecret() (token, sum string, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("random token: %w", err)
	}
	token = base64.RawURLEncoding.EncodeToString(b[:])
	h := sha256.Sum256([]byte(token))
	return token, hex.EncodeToString(h[:]), nil
}

// matches reports whether token hashes to the stored hex SHA-256, in
// constant time.
func matches(token, stored string) bool {
	sum := sha256.Sum256([]byte(token))
	want, err := hex.DecodeString(stored)
	return err == nil && len(want) == len(sum) && subtle.ConstantTimeCompare(sum[:], want) == 1
}

// errForbidden is any failed token check; which one is logged, not told.
var errForbidden = errors.New("forbidden")

// authorize checks the request's token against machine's current token
// and returns the stored token. Errors other than errForbidden are the
// store's.
//
// The token is accepted only from the address it is bound to, or from
// one of also (the deployed OS's addresses, for a deploy's metadata).
func (s *Server) authorize(r *http.Request, machine string, also func(inventory.BootToken) []netip.Addr) (inventory.BootToken, error) {
	given := ""
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return inventory.BootToken{}, fmt.Errorf("%w: authorization is not a bearer token", errForbidden)
		}
		given = strings.TrimSpace(tok)
	} else {
		given = r.URL.Query().Get("token")
	}
	if given == "" {
		return inventory.BootToken{}, fmt.Errorf("%w: no token", errForbidden)
	}
	stored, err := s.backend.Tokens().Get(r.Context(), machine)
	if errors.Is(err, inventory.ErrNotFound) {
		return inventory.BootToken{}, fmt.Errorf("%w: no token issued", errForbidden)
	}
	if err != nil {
		return inventory.BootToken{}, err
	}
	if stored.SHA256 == "" || !matches(given, stored.SHA256) {
		return inventory.BootToken{}, fmt.Errorf("%w: token does not match", errForbidden)
	}
	if !s.opts.Now().Before(stored.Expires) {
		return inventory.BootToken{}, fmt.Errorf("%w: token expired at %s", errForbidden, stored.Expires.Format(time.RFC3339))
	}
	from := remoteAddr(r)
	if !from.IsValid() || from.String() != stored.Address {
		ok := false
		if also != nil && from.IsValid() {
			for _, a := range also(stored) {
				ok = ok || a == from
			}
		}
		if !ok {
			return inventory.BootToken{}, fmt.Errorf("%w: token bound to %s, used from %s", errForbidden, stored.Address, from)
		}
	}
	return stored, nil
}

// checkAuth answers 403 (or 503) and returns false when the request may
// not touch machine's data.
func (s *Server) checkAuth(w http.ResponseWriter, r *http.Request, machine string, also func(inventory.BootToken) []netip.Addr) (inventory.BootToken, bool) {
	if !validName(machine) {
		http.Error(w, fmt.Sprintf("%q is not a machine name", machine), http.StatusNotFound)
		return inventory.BootToken{}, false
	}
	tok, err := s.authorize(r, machine, also)
	if err == nil {
		return tok, true
	}
	log := s.log.With("machine", machine, "path", r.URL.Path, "remote", r.RemoteAddr)
	if errors.Is(err, errForbidden) {
		log.Warn("boot request refused", "err", err)
		if _, known := s.backend.Machine(machine); known { // no timeline for made-up names
			s.backend.Record(machine, EventRefused, fmt.Sprintf("%s from %s: %v", r.URL.Path, remoteAddr(r), err))
		}
		http.Error(w, "forbidden: a valid boot token for this machine is required", http.StatusForbidden)
		return tok, false
	}
	log.Error("check boot token", "err", err)
	http.Error(w, "token store unavailable, try again", http.StatusServiceUnavailable)
	return tok, false
}
