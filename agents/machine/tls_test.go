package machine

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kilnhq/kiln/agents/machine/initramfs"
	"github.com/kilnhq/kiln/agents/machine/racktest"
	"github.com/kilnhq/kiln/inventory/pki"
	"github.com/kilnhq/kiln/spec/agentapi"
	"gopkg.in/yaml.v3"
)

// testCA makes a CA in a temporary folder and issues a server
// certificate for hosts; it returns the CA's PEM and the certificate.
func testCA(t *testing.T, hosts ...string) ([]byte, tls.Certificate) {
	t.Helper()
	dir := t.TempDir()
	if err := pki.Init(dir, "", time.Now()); err != nil {
		t.Fatal(err)
	}
	return caPEM(t, dir), issueCert(t, dir, "rack", hosts...)
}

func caPEM(t *testing.T, dir string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, pki.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func issueCert(t *testing.T, dir, name string, hosts ...string) tls.Certificate {
	t.Helper()
	ca, err := pki.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath, err := ca.Issue(dir, pki.IssueOptions{Name: name, Hosts: hosts})
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var quickRetry = Retry{Initial: time.Millisecond, Max: 5 * time.Millisecond, Elapsed: 200 * time.Millisecond}

func tlsClient(t *testing.T, url string, ca []byte) *Client {
	t.Helper()
	c, err := NewTLSClient(url, racktest.Machine, testToken, ca, quickRetry, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTLSClientVerifiesTheRack: an agent holding the CA talks to the rack
// whose certificate that CA signed for the address it dials, and to
// nothing else: not a rack with another CA's certificate (an impostor on
// the provisioning network), not a certificate for another name, not
// plain http, not a redirect to plain http.
func TestTLSClientVerifiesTheRack(t *testing.T) {
	t.Parallel()
	log := testLogger(t)
	ca, good := testCA(t, "127.0.0.1")

	rack := racktest.NewTLS(t, log, good)
	if task, err := tlsClient(t, rack.Server.URL, ca).Task(context.Background()); err != nil || task.Purpose != agentapi.PurposeCommission {
		t.Fatalf("the right rack: task %+v, %v", task, err)
	}

	// An impostor with a certificate for the same address from its own CA.
	_, forged := testCA(t, "127.0.0.1")
	impostor := racktest.NewTLS(t, log, forged)
	_, err := tlsClient(t, impostor.Server.URL, ca).Task(context.Background())
	var unknown x509.UnknownAuthorityError
	if err == nil || !errors.As(err, &unknown) {
		t.Errorf("impostor rack (another CA): err = %v, want an unknown-authority error", err)
	}

	// The right CA, but a certificate for another rack's name.
	dir := t.TempDir()
	if err := pki.Init(dir, "", time.Now()); err != nil {
		t.Fatal(err)
	}
	other := racktest.NewTLS(t, log, issueCert(t, dir, "rack-2", "10.42.9.9", "rack-2.lab"))
	_, err = tlsClient(t, other.Server.URL, caPEM(t, dir)).Task(context.Background())
	if err == nil || !strings.Contains(err.Error(), "certificate is valid for 10.42.9.9, not 127.0.0.1") {
		t.Errorf("wrong name: err = %v", err)
	}

	// Plain http, given as kiln.url or handed out later, is never dialled.
	var plainHits atomic.Int32
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { plainHits.Add(1) }))
	defer plain.Close()
	if _, err := NewTLSClient(plain.URL, racktest.Machine, testToken, ca, quickRetry, log); !errors.Is(err, ErrDowngrade) {
		t.Errorf("http kiln.url with a CA: err = %v, want ErrDowngrade", err)
	}
	c := tlsClient(t, rack.Server.URL, ca)
	if _, err := c.Get(context.Background(), plain.URL+"/metadata/vm-2/user-data"); !errors.Is(err, ErrDowngrade) {
		t.Errorf("http metadata URL: err = %v, want ErrDowngrade", err)
	}
	// A redirect from the (verified) rack to http is not followed.
	redirector := httptest.NewUnstartedServer(http.RedirectHandler(plain.URL+"/x", http.StatusFound))
	redirector.TLS = &tls.Config{Certificates: []tls.Certificate{good}}
	redirector.StartTLS()
	defer redirector.Close()
	if _, err := tlsClient(t, redirector.URL, ca).Get(context.Background(), redirector.URL+"/metadata/vm-2/user-data"); !errors.Is(err, ErrDowngrade) {
		t.Errorf("redirect to http: err = %v, want ErrDowngrade", err)
	}
	if n := plainHits.Load(); n != 0 {
		t.Errorf("the plain http server got %d requests", n)
	}
}

// TestAgentRunsOverTLS: a commission and a deploy run end to end against
// the real boot server over https. The deploy's seed makes the deployed
// OS trust the rack's CA (cloud-init ca_certs) and report in over https.
func TestAgentRunsOverTLS(t *testing.T) {
	t.Parallel()
	log := testLogger(t)
	ca, cert := testCA(t, "127.0.0.1")
	rack := racktest.NewTLS(t, log, cert)
	env := &rackEnv{rack: rack, boot: rack.Server, log: log}

	c := tlsClient(t, rack.Server.URL, ca)
	images, err := TLSHTTPClient(ca, 0, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	a, console := newTestAgent(t, env, testToken)
	a.Client, a.Deployer, a.Eraser.Client = c, &Deployer{Client: c, HTTP: images, Log: log, CA: ca}, c
	if err := a.Run(context.Background()); err != nil {
		t.Fatalf("commission over TLS: %v\n%s", err, console)
	}
	if rs := rack.Results(); len(rs) != 1 || !rs[0].Success {
		t.Fatalf("results = %+v", rs)
	}

	rack.SetImage("disk.raw", gptImage(t), "")
	rack.SetPurpose(agentapi.PurposeDeploy)
	task, err := c.Task(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(task.MetadataURL, "https://") || !strings.HasPrefix(task.Image.URL, "https://") {
		t.Fatalf("task URLs over TLS: %s %s", task.MetadataURL, task.Image.URL)
	}
	disk := agentapi.Disk{Name: "vda", Path: tempDisk(t, diskSize), SizeBytes: diskSize}
	if err := a.Deployer.Deploy(context.Background(), task, disk); err != nil {
		t.Fatal(err)
	}
	vd := readSeedFile(t, disk.Path, "vendor-data")
	var cfg struct {
		CACerts   struct{ Trusted []string } `yaml:"ca_certs"`
		PhoneHome struct{ URL string }       `yaml:"phone_home"`
	}
	if !strings.HasPrefix(vd, "#cloud-config\n") {
		t.Fatalf("vendor-data:\n%s", vd)
	}
	if err := yaml.Unmarshal([]byte(vd), &cfg); err != nil {
		t.Fatalf("%v: %q", err, vd)
	}
	if len(cfg.CACerts.Trusted) != 1 || cfg.CACerts.Trusted[0] != string(ca) {
		t.Errorf("seed ca_certs.trusted = %q, want the rack's CA", cfg.CACerts.Trusted)
	}
	if !strings.HasPrefix(cfg.PhoneHome.URL, rack.Server.URL+"/os/vm-2/report?token=") {
		t.Errorf("phone_home URL %q, want the rack's https URL", cfg.PhoneHome.URL)
	}
	// Debian 12's cloud-init (22.4) accepts it.
	if ci, err := exec.LookPath("cloud-init"); err == nil {
		p := filepath.Join(t.TempDir(), "vendor-data")
		os.WriteFile(p, []byte(vd), 0o644)
		out, err := exec.Command(ci, "schema", "--config-file", p).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Valid cloud-config") {
			t.Errorf("cloud-init schema rejects the seed's vendor-data: %v\n%s\n%s", err, out, vd)
		}
	}
}

func readSeedFile(t *testing.T, path, name string) string {
	t.Helper()
	fs := openSeed(t, path)
	fh, err := fs.OpenFile("/"+name, os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(fh)
	// go-diskfs's FAT reader pads to 256 bytes (mdir shows the true size).
	return strings.TrimRight(string(b), "\x00")
}

func TestSeedCA(t *testing.T) {
	t.Parallel()
	ca := []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	userCC := "#cloud-config\nca_certs:\n  trusted: [\"OTHER\"]\npackages: [htop]\n"
	plainUser := "#!/bin/sh\necho hi\n"
	for name, tc := range map[string]struct {
		in       map[string]string
		wantVD   []string // in vendor-data's ca_certs.trusted
		wantUD   []string // nil: user-data unchanged
		errorHas string
	}{
		"phone_home kept":      {in: map[string]string{"vendor-data": "#cloud-config\nphone_home: {url: 'https://r/os'}\n", "user-data": plainUser}, wantVD: []string{string(ca)}},
		"no vendor-data":       {in: map[string]string{"user-data": "#cloud-config\nhostname: a\n"}, wantVD: []string{string(ca)}},
		"user sets ca_certs":   {in: map[string]string{"vendor-data": "#cloud-config\n{}\n", "user-data": userCC}, wantVD: []string{string(ca)}, wantUD: []string{"OTHER", string(ca)}},
		"vendor-data a script": {in: map[string]string{"vendor-data": "#!/bin/sh\n"}, errorHas: "not a #cloud-config"},
	} {
		t.Run(name, func(t *testing.T) {
			files := map[string][]byte{}
			for k, v := range tc.in {
				files[k] = []byte(v)
			}
			err := addSeedCA(files, ca)
			if tc.errorHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errorHas) {
					t.Fatalf("err = %v, want %q", err, tc.errorHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			trusted := func(doc []byte) []string {
				var c struct {
					CACerts struct{ Trusted []string } `yaml:"ca_certs"`
				}
				if err := yaml.Unmarshal(doc, &c); err != nil {
					t.Fatal(err)
				}
				return c.CACerts.Trusted
			}
			if got := trusted(files["vendor-data"]); strings.Join(got, "|") != strings.Join(tc.wantVD, "|") {
				t.Errorf("vendor-data trusted = %q", got)
			}
			if strings.Contains(tc.in["vendor-data"], "phone_home") && !strings.Contains(string(files["vendor-data"]), "phone_home") {
				t.Errorf("phone_home lost:\n%s", files["vendor-data"])
			}
			if tc.wantUD == nil {
				if string(files["user-data"]) != tc.in["user-data"] {
					t.Errorf("user-data changed:\n%s", files["user-data"])
				}
			} else if got := trusted(files["user-data"]); strings.Join(got, "|") != strings.Join(tc.wantUD, "|") {
				t.Errorf("user-data trusted = %q", got)
			}
		})
	}
}

// The agent reads the CA where the image builder puts it.
func TestCAPathIsTheImagesCAFile(t *testing.T) {
	if CAPath != "/"+initramfs.CAFile {
		t.Errorf("machine.CAPath %q, initramfs.CAFile %q", CAPath, initramfs.CAFile)
	}
}

// TestVendorDataOverTLSPointsAtHTTPS: on a rack whose BaseURL is the
// plain http URL iPXE uses, vendor-data fetched over TLS sends the
// deployed OS's report (and its token) to the https URL the agent used,
// not to plain http.
func TestVendorDataOverTLSPointsAtHTTPS(t *testing.T) {
	t.Parallel()
	ca, cert := testCA(t, "127.0.0.1")
	rack := racktest.NewTLSBase(t, testLogger(t), cert, "http://10.42.0.1:8080")
	rack.SetImage("disk.raw", []byte("image"), "")
	rack.SetPurpose(agentapi.PurposeDeploy)
	vd, err := tlsClient(t, rack.Server.URL, ca).Get(context.Background(), rack.Server.URL+"/metadata/vm-2/vendor-data")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		PhoneHome struct{ URL string } `yaml:"phone_home"`
	}
	if err := yaml.Unmarshal(vd, &cfg); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(cfg.PhoneHome.URL, rack.Server.URL+"/os/vm-2/report?token=") {
		t.Errorf("phone_home URL %q, want %s/os/…", cfg.PhoneHome.URL, rack.Server.URL)
	}
}
