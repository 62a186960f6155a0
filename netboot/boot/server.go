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
	"strconv"
	"strings"
	"time"

	"github.com/kilnhq/kiln/inventory"
)

// Server is the HTTP boot server.
type Server struct {
	opts    Options
	backend Backend
	metrics *Metrics
	log     *slog.Logger
	mux     *http.ServeMux
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
	s := &Server{opts: opts, backend: backend, metrics: metrics, log: log, mux: http.NewServeMux()}
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

// discoveredName is the name an unknown MAC's token is bound to.
func discoveredName(mac string) string {
	return "discovered-" + strings.ReplaceAll(mac, ":", "-")
}

func isDiscovered(name string) bool { return strings.HasPrefix(name, "discovered-") }

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

// issueToken makes a new random token for machine, stores its hash and
// returns it with the boot ID. The previous token stops working.
func (s *Server) issueToken(ctx context.Context, machine string) (token, bootID string, err error) {
	token, sum, err := newSecret()
	if err != nil {
		return "", "", err
	}
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", "", fmt.Errorf("random boot ID: %w", err)
	}
	bootID = hex.EncodeToString(id[:])
	now := s.opts.Now()
	err = s.backend.Tokens().Put(ctx, machine, inventory.BootToken{
		SHA256:   sum,
		Expires:  now.Add(s.opts.TokenTTL),
		IssuedAt: now,
		BootID:   bootID,
	})
	if err != nil {
		return "", "", err
	}
	return token, bootID, nil
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
func (s *Server) authorize(r *http.Request, machine string) (inventory.BootToken, error) {
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
	if !matches(given, stored.SHA256) {
		return inventory.BootToken{}, fmt.Errorf("%w: token does not match", errForbidden)
	}
	if !s.opts.Now().Before(stored.Expires) {
		return inventory.BootToken{}, fmt.Errorf("%w: token expired at %s", errForbidden, stored.Expires.Format(time.RFC3339))
	}
	return stored, nil
}

// checkAuth answers 403 (or 503) and returns false when the request may
// not touch machine's data.
func (s *Server) checkAuth(w http.ResponseWriter, r *http.Request, machine string) (inventory.BootToken, bool) {
	if !validName(machine) {
		http.Error(w, fmt.Sprintf("%q is not a machine name", machine), http.StatusNotFound)
		return inventory.BootToken{}, false
	}
	tok, err := s.authorize(r, machine)
	if err == nil {
		return tok, true
	}
	log := s.log.With("machine", machine, "path", r.URL.Path, "remote", r.RemoteAddr)
	if errors.Is(err, errForbidden) {
		log.Warn("boot request refused", "err", err)
		http.Error(w, "forbidden: a valid boot token for this machine is required", http.StatusForbidden)
		return tok, false
	}
	log.Error("check boot token", "err", err)
	http.Error(w, "token store unavailable, try again", http.StatusServiceUnavailable)
	return tok, false
}
