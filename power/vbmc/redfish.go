package vbmc

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// The Redfish resources served, a subset of the DMTF schema.
const (
	rootPath       = "/redfish/v1"
	sessionSvcPath = "/redfish/v1/SessionService"
	sessionsPath   = "/redfish/v1/SessionService/Sessions"
	systemsPath    = "/redfish/v1/Systems"
	resetAction    = "/Actions/ComputerSystem.Reset"
	maxBody        = 1 << 20
)

var (
	resetTypes       = []string{"On", "ForceOn", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "PowerCycle", "PushPowerButton"}
	overrideEnabled  = []string{string(BootDisabled), string(BootOnce), string(BootContinuous)}
	overrideTargets  = []string{string(TargetNone), string(TargetPxe), string(TargetHdd)}
	overrideModes    = []string{"Legacy", "UEFI"}
	systemProperties = []string{"@odata.id", "@odata.type", "Id", "Name", "SystemType", "Manufacturer", "Model", "UUID", "PowerState", "Status", "Boot", "Actions", "Links"}
)

type obj = map[string]any

func link(path string) obj { return obj{"@odata.id": path} }

// rfSession is a Redfish login session.
type rfSession struct {
	id, token, user string
	created, used   time.Time
}

type sessionStore struct {
	mu      sync.Mutex
	byToken map[string]*rfSession
	byID    map[string]*rfSession
}

func newSessionStore() *sessionStore {
	return &sessionStore{byToken: map[string]*rfSession{}, byID: map[string]*rfSession{}}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *sessionStore) create(user string, now time.Time) *rfSession {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := &rfSession{id: randomHex(8), token: randomHex(16), user: user, created: now, used: now}
	s.byToken[sess.token] = sess
	s.byID[sess.id] = sess
	return sess
}

func (s *sessionStore) removeLocked(sess *rfSession) {
	delete(s.byToken, sess.token)
	delete(s.byID, sess.id)
}

// expireLocked removes sessions idle for longer than timeout.
func (s *sessionStore) expireLocked(now time.Time, timeout time.Duration) {
	for _, sess := range s.byID {
		if now.Sub(sess.used) > timeout {
			s.removeLocked(sess)
		}
	}
}

// use finds the session of token, unless it expired, and marks it used.
func (s *sessionStore) use(token string, now time.Time, timeout time.Duration) *rfSession {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(now, timeout)
	sess := s.byToken[token]
	if sess != nil {
		sess.used = now
	}
	return sess
}

func (s *sessionStore) get(id string, now time.Time, timeout time.Duration) *rfSession {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(now, timeout)
	return s.byID[id]
}

func (s *sessionStore) remove(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.byID[id]
	if sess != nil {
		s.removeLocked(sess)
	}
	return sess != nil
}

func (s *sessionStore) ids(now time.Time, timeout time.Duration) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(now, timeout)
	ids := make([]string, 0, len(s.byID))
	for id := range s.byID {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func (s *sessionStore) clear() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.byID)
	clear(s.byID)
	clear(s.byToken)
	return n
}

// handler serves Redfish and the admin API, or the admin API only.
func (b *BMC) handler(adminOnly bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Path
		if len(path) > 1 {
			path = strings.TrimSuffix(path, "/")
		}
		switch {
		case path == "/vbmc" || strings.HasPrefix(path, "/vbmc/"):
			b.serveAdmin(w, r, path)
		case !adminOnly && (path == "/redfish" || strings.HasPrefix(path, "/redfish/")):
			if b.redfishFaults(w, r) {
				b.serveRedfish(w, r, path)
			}
		default:
			b.rfError(w, http.StatusNotFound, "ResourceMissingAtURI", fmt.Sprintf("The resource at the URI %s was not found.", r.URL.Path))
		}
	})
}

// redfishFaults applies the faults to one request; false when the request
// was answered (an injected error) or abandoned (a hang that outlived it).
func (b *BMC) redfishFaults(w http.ResponseWriter, r *http.Request) bool {
	for {
		f := b.faults.take(ProtocolRedfish)
		if f.hang {
			select {
			case <-f.changed:
				continue
			case <-r.Context().Done():
				return false
			case <-b.ctx.Done():
				return false
			}
		}
		if f.latency > 0 {
			t := time.NewTimer(f.latency)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return false
			}
		}
		if f.fail {
			b.rfError(w, http.StatusInternalServerError, "InternalError", "The request failed due to an internal service error (injected fault). The service is still operational.")
			return false
		}
		return true
	}
}

func (b *BMC) serveRedfish(w http.ResponseWriter, r *http.Request, path string) {
	if b.servePublic(w, r, path) {
		return
	}
	if _, ok := b.authenticate(r); !ok {
		b.unauthorized(w)
		return
	}
	sysPath := systemsPath + "/" + b.cfg.Name
	switch {
	case path == sessionSvcPath:
		if b.allow(w, r, "GET") {
			b.writeSessionService(w)
		}
	case path == sessionsPath:
		if b.allow(w, r, "GET", "POST") {
			b.writeSessions(w)
		}
	case strings.HasPrefix(path, sessionsPath+"/") && !strings.Contains(path[len(sessionsPath)+1:], "/"):
		b.serveSession(w, r, path[len(sessionsPath)+1:])
	case path == systemsPath:
		if b.allow(w, r, "GET") {
			writeJSON(w, http.StatusOK, collection("#ComputerSystemCollection.ComputerSystemCollection", systemsPath, "Computer System Collection", []obj{link(sysPath)}))
		}
	case path == sysPath:
		if !b.allow(w, r, "GET", "PATCH") {
			return
		}
		if r.Method == http.MethodPatch {
			b.patchSystem(w, r)
			return
		}
		b.writeSystem(w, r.Context(), http.StatusOK)
	case path == sysPath+resetAction:
		if b.allow(w, r, "POST") {
			b.resetSystem(w, r)
		}
	default:
		b.notFound(w, r)
	}
}

// servePublic serves the resources anyone may read, and the login; it
// reports whether it answered.
func (b *BMC) servePublic(w http.ResponseWriter, r *http.Request, path string) bool {
	var body obj
	switch path {
	case "/redfish":
		body = obj{"v1": rootPath + "/"}
	case rootPath:
		body = b.serviceRoot()
	case rootPath + "/odata":
		body = obj{"@odata.context": rootPath + "/$metadata", "value": []obj{
			{"name": "Service", "kind": "Singleton", "url": rootPath + "/"},
			{"name": "Systems", "kind": "Singleton", "url": systemsPath},
			{"name": "SessionService", "kind": "Singleton", "url": sessionSvcPath},
		}}
	case sessionsPath:
		if r.Method != http.MethodPost {
			return false // listing sessions needs a login
		}
		b.login(w, r)
		return true
	default:
		return false
	}
	if b.allow(w, r, "GET") {
		writeJSON(w, http.StatusOK, body)
	}
	return true
}

func (b *BMC) writeSessionService(w http.ResponseWriter) {
	writeJSON(w, http.StatusOK, obj{
		"@odata.type":    "#SessionService.v1_1_8.SessionService",
		"@odata.id":      sessionSvcPath,
		"Id":             "SessionService",
		"Name":           "Session Service",
		"ServiceEnabled": true,
		"SessionTimeout": int(math.Ceil(b.cfg.SessionTimeout.Seconds())),
		"Sessions":       link(sessionsPath),
		"Status":         obj{"State": "Enabled", "Health": "OK"},
	})
}

func (b *BMC) writeSessions(w http.ResponseWriter) {
	var members []obj
	for _, id := range b.sessions.ids(b.now(), b.cfg.SessionTimeout) {
		members = append(members, link(sessionsPath+"/"+id))
	}
	writeJSON(w, http.StatusOK, collection("#SessionCollection.SessionCollection", sessionsPath, "Session Collection", members))
}

// serveSession reads or deletes (logs out) one session.
func (b *BMC) serveSession(w http.ResponseWriter, r *http.Request, id string) {
	s := b.sessions.get(id, b.now(), b.cfg.SessionTimeout)
	if s == nil {
		b.notFound(w, r)
		return
	}
	if !b.allow(w, r, "GET", "DELETE") {
		return
	}
	if r.Method == http.MethodDelete {
		b.sessions.remove(id)
		b.log.Debug("Redfish logout", "session", id)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	writeJSON(w, http.StatusOK, sessionResource(s))
}

func collection(typ, path, name string, members []obj) obj {
	if members == nil {
		members = []obj{}
	}
	return obj{"@odata.type": typ, "@odata.id": path, "Name": name, "Members@odata.count": len(members), "Members": members}
}

func (b *BMC) serviceRoot() obj {
	return obj{
		"@odata.type":    "#ServiceRoot.v1_5_0.ServiceRoot",
		"@odata.id":      rootPath + "/",
		"Id":             "RootService",
		"Name":           "Kiln virtual BMC",
		"RedfishVersion": "1.6.0",
		"UUID":           uuidString(b.uuid),
		"Vendor":         "Kiln",
		"Product":        "Kiln virtual BMC",
		"Systems":        link(systemsPath),
		"SessionService": link(sessionSvcPath),
		"Links":          obj{"Sessions": link(sessionsPath)},
	}
}

func sessionResource(s *rfSession) obj {
	return obj{
		"@odata.type": "#Session.v1_3_0.Session",
		"@odata.id":   sessionsPath + "/" + s.id,
		"Id":          s.id,
		"Name":        "User Session",
		"UserName":    s.user,
	}
}

// authenticate accepts a session token (X-Auth-Token) or HTTP Basic
// credentials; the session is nil for Basic.
func (b *BMC) authenticate(r *http.Request) (*rfSession, bool) {
	if tok := r.Header.Get("X-Auth-Token"); tok != "" {
		if s := b.sessions.use(tok, b.now(), b.cfg.SessionTimeout); s != nil {
			return s, true
		}
	}
	if u, p, ok := r.BasicAuth(); ok && b.credentialsOK(u, p) {
		return nil, true
	}
	return nil, false
}

func (b *BMC) credentialsOK(user, pass string) bool {
	u := subtle.ConstantTimeCompare([]byte(user), []byte(b.cfg.Username))
	p := subtle.ConstantTimeCompare([]byte(pass), []byte(b.cfg.Password))
	return u&p == 1
}

func (b *BMC) login(w http.ResponseWriter, r *http.Request) {
	var req struct {
		UserName *string
		Password *string
	}
	if !b.decode(w, r, &req) {
		return
	}
	if req.UserName == nil || req.Password == nil {
		b.rfError(w, http.StatusBadRequest, "PropertyMissing", "The request to create a session requires the properties UserName and Password.")
		return
	}
	if !b.credentialsOK(*req.UserName, *req.Password) {
		b.log.Info("Redfish login refused", "user", *req.UserName, "remote", r.RemoteAddr)
		b.unauthorized(w)
		return
	}
	s := b.sessions.create(*req.UserName, b.now())
	b.log.Debug("Redfish login", "user", s.user, "session", s.id)
	w.Header().Set("Location", sessionsPath+"/"+s.id)
	w.Header().Set("X-Auth-Token", s.token)
	writeJSON(w, http.StatusCreated, sessionResource(s))
}

func (b *BMC) system(ctx context.Context) (obj, error) {
	st, err := b.state(ctx)
	if err != nil {
		return nil, err
	}
	boot := b.Boot()
	mode := "Legacy"
	if boot.UEFI {
		mode = "UEFI"
	}
	sysPath := systemsPath + "/" + b.cfg.Name
	return obj{
		"@odata.type":  "#ComputerSystem.v1_13_0.ComputerSystem",
		"@odata.id":    sysPath,
		"Id":           b.cfg.Name,
		"Name":         b.cfg.Name,
		"SystemType":   "Virtual",
		"Manufacturer": "Kiln",
		"Model":        "Kiln virtual machine",
		"UUID":         uuidString(b.uuid),
		"PowerState":   string(st),
		"Status":       obj{"State": "Enabled", "Health": "OK"},
		"Boot": obj{
			"BootSourceOverrideEnabled":                         string(boot.Enabled),
			"BootSourceOverrideEnabled@Redfish.AllowableValues": overrideEnabled,
			"BootSourceOverrideTarget":                          string(boot.Target),
			"BootSourceOverrideTarget@Redfish.AllowableValues":  overrideTargets,
			"BootSourceOverrideMode":                            mode,
			"BootSourceOverrideMode@Redfish.AllowableValues":    overrideModes,
		},
		"Actions": obj{"#ComputerSystem.Reset": obj{
			"target":                            sysPath + resetAction,
			"ResetType@Redfish.AllowableValues": resetTypes,
		}},
		"Links": obj{},
	}, nil
}

func (b *BMC) writeSystem(w http.ResponseWriter, ctx context.Context, code int) {
	sys, err := b.system(ctx)
	if err != nil {
		b.rfError(w, http.StatusInternalServerError, "InternalError", "Reading the power state failed: "+err.Error())
		return
	}
	writeJSON(w, code, sys)
}

func (b *BMC) patchSystem(w http.ResponseWriter, r *http.Request) {
	var req map[string]json.RawMessage
	if !b.decode(w, r, &req) {
		return
	}
	boot := b.Boot()
	changed := false
	for k, v := range req {
		if strings.Contains(k, "@") {
			continue // annotations are not properties
		}
		if k != "Boot" {
			if slices.Contains(systemProperties, k) {
				b.rfError(w, http.StatusBadRequest, "PropertyNotWritable", fmt.Sprintf("The property %s is a read only property and cannot be assigned a value.", k))
			} else {
				b.rfError(w, http.StatusBadRequest, "PropertyUnknown", fmt.Sprintf("The property %s is not in the list of valid properties for the resource.", k))
			}
			return
		}
		var bootReq map[string]json.RawMessage
		if err := json.Unmarshal(v, &bootReq); err != nil {
			b.rfError(w, http.StatusBadRequest, "PropertyValueTypeError", "The value of the property Boot is not an object.")
			return
		}
		for bk, bv := range bootReq {
			if strings.Contains(bk, "@") {
				continue
			}
			var s string
			allowed := map[string][]string{
				"BootSourceOverrideEnabled": overrideEnabled,
				"BootSourceOverrideTarget":  overrideTargets,
				"BootSourceOverrideMode":    overrideModes,
			}[bk]
			if allowed == nil {
				b.rfError(w, http.StatusBadRequest, "PropertyUnknown", fmt.Sprintf("The property Boot/%s is not in the list of valid properties for the resource.", bk))
				return
			}
			if err := json.Unmarshal(bv, &s); err != nil {
				b.rfError(w, http.StatusBadRequest, "PropertyValueTypeError", fmt.Sprintf("The value %s for the property Boot/%s is of a different type than the property can accept.", bv, bk))
				return
			}
			if !slices.Contains(allowed, s) {
				b.rfError(w, http.StatusBadRequest, "PropertyValueNotInList", fmt.Sprintf("The value %s for the property Boot/%s is not in the list of acceptable values (%s).", s, bk, strings.Join(allowed, ", ")))
				return
			}
			switch bk {
			case "BootSourceOverrideEnabled":
				boot.Enabled = BootEnabled(s)
			case "BootSourceOverrideTarget":
				boot.Target = BootTarget(s)
			case "BootSourceOverrideMode":
				boot.UEFI = s == "UEFI"
			}
			changed = true
		}
	}
	if !changed {
		b.rfError(w, http.StatusBadRequest, "PropertyMissing", "The request has no property to change; only Boot/BootSourceOverrideEnabled, BootSourceOverrideTarget and BootSourceOverrideMode are writable.")
		return
	}
	if err := b.SetBoot(boot); err != nil {
		b.rfError(w, http.StatusBadRequest, "PropertyValueNotInList", err.Error())
		return
	}
	b.writeSystem(w, r.Context(), http.StatusOK)
}

func (b *BMC) resetSystem(w http.ResponseWriter, r *http.Request) {
	var req map[string]json.RawMessage
	if !b.decode(w, r, &req) {
		return
	}
	for k := range req {
		if k != "ResetType" {
			b.rfError(w, http.StatusBadRequest, "ActionParameterUnknown", fmt.Sprintf("The action ComputerSystem.Reset was submitted with the invalid parameter %s.", k))
			return
		}
	}
	raw, ok := req["ResetType"]
	if !ok {
		b.rfError(w, http.StatusBadRequest, "ActionParameterMissing", "The action ComputerSystem.Reset requires the parameter ResetType to be present in the request body.")
		return
	}
	var rt string
	if err := json.Unmarshal(raw, &rt); err != nil || !slices.Contains(resetTypes, rt) {
		b.rfError(w, http.StatusBadRequest, "ActionParameterValueNotInList", fmt.Sprintf("The value %s for the parameter ResetType in the action ComputerSystem.Reset is not in the list of acceptable values (%s).", raw, strings.Join(resetTypes, ", ")))
		return
	}
	ctx := r.Context()
	var err error
	switch rt {
	case "On", "ForceOn":
		err = b.powerOn(ctx)
	case "ForceOff":
		err = b.powerOff(ctx, true)
	case "GracefulShutdown":
		err = b.powerOff(ctx, false)
	case "GracefulRestart":
		err = b.gracefulRestart(ctx)
	case "ForceRestart":
		err = b.reset(ctx, true)
	case "PowerCycle":
		err = b.cycle(ctx, true)
	case "PushPowerButton":
		var st PowerState
		if st, err = b.state(ctx); err == nil {
			if st == On {
				err = b.powerOff(ctx, false)
			} else {
				err = b.powerOn(ctx)
			}
		}
	}
	if err != nil {
		b.log.Warn("Redfish reset failed", "resetType", rt, "err", err)
		b.rfError(w, http.StatusInternalServerError, "InternalError", fmt.Sprintf("ComputerSystem.Reset %s failed: %v", rt, err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// decode reads a JSON request body into v, answering 400 when it can't.
func (b *BMC) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	body := http.MaxBytesReader(w, r.Body, maxBody)
	if err := json.NewDecoder(body).Decode(v); err != nil {
		b.rfError(w, http.StatusBadRequest, "MalformedJSON", "The request body submitted was malformed JSON and could not be parsed by the receiving service: "+err.Error())
		return false
	}
	return true
}

// allow answers 405 unless the request's method is one of methods (HEAD
// goes with GET).
func (b *BMC) allow(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	m := r.Method
	if m == http.MethodHead {
		m = http.MethodGet
	}
	if slices.Contains(methods, m) {
		return true
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	b.rfError(w, http.StatusMethodNotAllowed, "GeneralError", fmt.Sprintf("The method %s is not allowed on %s.", r.Method, r.URL.Path))
	return false
}

func (b *BMC) unauthorized(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Basic realm="Kiln vBMC"`)
	b.rfError(w, http.StatusUnauthorized, "NoValidSession", "There is no valid session established with the implementation.")
}

func (b *BMC) notFound(w http.ResponseWriter, r *http.Request) {
	b.rfError(w, http.StatusNotFound, "ResourceMissingAtURI", fmt.Sprintf("The resource at the URI %s was not found.", r.URL.Path))
}

// rfError answers with a Redfish error body; id is a message of the Base
// registry.
func (b *BMC) rfError(w http.ResponseWriter, code int, id, msg string) {
	sev := "Warning"
	if code >= 500 {
		sev = "Critical"
	}
	writeJSON(w, code, obj{"error": obj{
		"code":    "Base.1.0.GeneralError",
		"message": msg,
		"@Message.ExtendedInfo": []obj{{
			"@odata.type": "#Message.v1_0_0.Message",
			"MessageId":   "Base.1.0." + id,
			"Message":     msg,
			"Severity":    sev,
			"Resolution":  "None.",
		}},
	}})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("OData-Version", "4.0")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(code)
	w.Write(append(body, '\n'))
}

// serveAdmin is the /vbmc admin API: faults, sessions and state, for
// tests and people. It needs the BMC's credentials and ignores faults.
func (b *BMC) serveAdmin(w http.ResponseWriter, r *http.Request, path string) {
	if _, ok := b.authenticate(r); !ok {
		b.unauthorized(w)
		return
	}
	switch path {
	case "/vbmc/faults":
		if !b.allow(w, r, "GET", "PUT", "POST", "DELETE") {
			return
		}
		switch r.Method {
		case http.MethodPut, http.MethodPost:
			var req struct {
				faultsJSON
				DropSessions bool `json:"dropSessions"`
			}
			dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&req); err != nil {
				b.rfError(w, http.StatusBadRequest, "MalformedJSON", "faults: "+err.Error())
				return
			}
			raw, _ := json.Marshal(req.faultsJSON)
			var f Faults
			if err := json.Unmarshal(raw, &f); err != nil {
				b.rfError(w, http.StatusBadRequest, "PropertyValueFormatError", "faults: "+err.Error())
				return
			}
			if err := b.SetFaults(f); err != nil {
				b.rfError(w, http.StatusBadRequest, "PropertyValueNotInList", err.Error())
				return
			}
			if req.DropSessions {
				b.DropSessions()
			}
		case http.MethodDelete:
			b.SetFaults(Faults{}) //nolint:errcheck // the zero value is valid
		}
		writeJSON(w, http.StatusOK, b.Faults())
	case "/vbmc/certificate":
		if !b.allow(w, r, "GET", "POST") {
			return
		}
		if r.Method == http.MethodPost {
			if err := b.RenewCertificate(); err != nil {
				b.rfError(w, http.StatusConflict, "ActionNotSupported", "renew certificate: "+err.Error())
				return
			}
		}
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(b.CertPEM())
	case "/vbmc/sessions":
		if b.allow(w, r, "DELETE") {
			b.DropSessions()
			w.WriteHeader(http.StatusNoContent)
		}
	case "/vbmc/state":
		if !b.allow(w, r, "GET") {
			return
		}
		st, err := b.state(r.Context())
		if err != nil {
			b.rfError(w, http.StatusInternalServerError, "InternalError", err.Error())
			return
		}
		boot := b.Boot()
		writeJSON(w, http.StatusOK, obj{
			"name":            b.cfg.Name,
			"powerState":      st,
			"boot":            obj{"enabled": boot.Enabled, "target": boot.Target, "uefi": boot.UEFI},
			"faults":          b.Faults(),
			"redfishSessions": len(b.sessions.ids(b.now(), b.cfg.SessionTimeout)),
		})
	default:
		b.notFound(w, r)
	}
}
