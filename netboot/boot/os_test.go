package boot_test

import (
	"net/url"
	"strings"
	"testing"
	"time"

	. "github.com/kilnhq/kiln/netboot/boot"
	"github.com/kilnhq/kiln/netboot/boot/boottest"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
	"gopkg.in/yaml.v3"
)

// phoneHomeURL reads the phone_home URL out of vendor-data.
func phoneHomeURL(t *testing.T, vendorData string) string {
	t.Helper()
	var v struct {
		PhoneHome struct {
			URL  string   `yaml:"url"`
			Post []string `yaml:"post"`
		} `yaml:"phone_home"`
	}
	if !strings.HasPrefix(vendorData, "#cloud-config\n") {
		t.Fatalf("vendor-data is not #cloud-config:\n%s", vendorData)
	}
	if err := yaml.Unmarshal([]byte(vendorData), &v); err != nil {
		t.Fatalf("vendor-data: %v\n%s", err, vendorData)
	}
	if v.PhoneHome.URL == "" || strings.Join(v.PhoneHome.Post, ",") != "instance_id,hostname,fqdn" {
		t.Fatalf("vendor-data has no phone_home posting instance_id, hostname and fqdn:\n%s", vendorData)
	}
	return v.PhoneHome.URL
}

// The deployed OS reports in with cloud-init's phone_home: a form POST to
// the URL in the deploy's vendor-data, whose token is its own, used once,
// and dies with the next network boot.
func TestOSReportIn(t *testing.T) {
	t.Parallel()
	inv := loadInventory(t, "../../examples/lab")
	b := boottest.New(inv, nil)
	ts := newTestServer(t, b)
	b.SetPurpose("vm-1", agentapi.PurposeDeploy)
	b.SetLease(vm1MAC, "127.0.0.1") // Kiln's DHCP gave vm-1 the test's address
	b.Pending(t, "vm-1", "t1", agentapi.PurposeDeploy)
	_, s := curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	bootToken := tokenOf(t, s)
	auth := []string{"-H", "Authorization: Bearer " + bootToken}

	code, vd := curl(t, append(auth, ts.URL+"/metadata/vm-1/vendor-data")...)
	if code != 200 {
		t.Fatalf("vendor-data: %d %s", code, vd)
	}
	u := phoneHomeURL(t, vd)
	if !strings.HasPrefix(u, ts.URL+"/os/vm-1/report?token=") {
		t.Fatalf("phone_home URL %q", u)
	}
	osToken, _ := url.Parse(u)
	if tok := osToken.Query().Get("token"); tok == "" || tok == bootToken {
		t.Fatalf("the report-in token must be its own, not the boot token: %q", tok)
	}
	form := func(target, data string) (int, string) {
		return curlIn(t, data, "-H", "Content-Type: application/x-www-form-urlencoded", "--data-binary", "@-", target)
	}
	reportURL := ts.URL + "/os/vm-1/report?token="
	for _, c := range []struct {
		name, url, data string
		code            int
		msg             string
	}{
		{"no token", ts.URL + "/os/vm-1/report", "hostname=vm-1", 403, "forbidden"},
		{"boot token is not a report-in token", reportURL + url.QueryEscape(bootToken), "hostname=vm-1", 403, "forbidden"},
		{"wrong token", reportURL + "AAAA", "hostname=vm-1", 403, "forbidden"},
		{"another machine", ts.URL + "/os/vm-2/report?token=" + osToken.Query().Get("token"), "hostname=vm-2", 403, "forbidden"},
		{"discovered names", ts.URL + "/os/discovered-52-54-00-00-00-01/report?token=x", "hostname=x", 404, "not a machine name"},
		{"hostile hostname", u, "hostname=" + url.QueryEscape("vm-1\n\x1b[2Jkind: Machine"), 400, "hostname"},
		{"hostile instance id", u, "instance_id=" + url.QueryEscape("a b;rm -rf"), 400, "instance_id"},
		{"nothing said", u, "pub_key_rsa=ssh-rsa+AAAA", 400, "at least hostname"},
		{"too big", u, "hostname=vm-1&x=" + strings.Repeat("a", MaxOSReportBytes), 413, ""},
		{"phone_home's form", u, "instance_id=kiln-vm-1-0&hostname=vm-1&fqdn=vm-1.lab.example&pub_key_rsa=ssh-rsa+AAAA", 204, ""},
		{"used once", u, "instance_id=kiln-vm-1-0&hostname=vm-1", 403, "forbidden"},
	} {
		code, msg := form(c.url, c.data)
		if code != c.code || !strings.Contains(msg, c.msg) {
			t.Errorf("%s: %d %q, want %d %q", c.name, code, msg, c.code, c.msg)
		}
	}
	got := b.Reports("vm-1")
	if len(got) != 1 || got[0].OS == nil || got[0].OS.Hostname != "vm-1" || got[0].OS.FQDN != "vm-1.lab.example" ||
		got[0].OS.InstanceID != "kiln-vm-1-0" || got[0].OS.Address != "127.0.0.1" {
		t.Fatalf("stored reports: %+v", got)
	}
	if ev := strings.Join(b.Events(), "\n"); !strings.Contains(ev, "vm-1 os-report vm-1") {
		t.Errorf("timeline lacks the OS report:\n%s", ev)
	}

	// The deploy ended: its boot token (in the CIDATA seed) is revoked,
	// and only its hash was ever stored, now cleared.
	if code, _ := curl(t, append(auth, ts.URL+"/metadata/vm-1/meta-data")...); code != 403 {
		t.Errorf("the deploy's boot token still works after the OS report: %d", code)
	}
	if rec, err := b.Tokens().Get(t.Context(), "vm-1"); err != nil || rec.SHA256 != "" || rec.OSSHA256 != "" {
		t.Errorf("token record after the OS report: %+v %v", rec, err)
	}
	if got := b.Reports("vm-1"); got[0].TaskID != "t1" || got[0].BootID == "" {
		t.Errorf("OS report not stamped with its boot: %+v", got[0])
	}

	// JSON with a boot ID works too; a new token dies with the next boot
	// (the next power task replaces the whole token record) and expires.
	b.Pending(t, "vm-1", "t1b", agentapi.PurposeDeploy)
	_, s = curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	auth = []string{"-H", "Authorization: Bearer " + tokenOf(t, s)}
	_, vd = curl(t, append(auth, ts.URL+"/metadata/vm-1/vendor-data")...)
	u2 := phoneHomeURL(t, vd)
	ts.clock.Add(DefaultOSTokenTTL + time.Second)
	if code, msg := curlIn(t, `{"hostname":"vm-1","bootID":"0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"}`, "-H", "Content-Type: application/json", "--data-binary", "@-", u2); code != 403 || !strings.Contains(msg, "expired") {
		t.Errorf("expired report-in token: %d %q", code, msg)
	}
	b.Pending(t, "vm-1", "t2", agentapi.PurposeDeploy)
	_, s = curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe") // the boot token expired too
	auth = []string{"-H", "Authorization: Bearer " + tokenOf(t, s)}
	_, vd = curl(t, append(auth, ts.URL+"/metadata/vm-1/vendor-data")...)
	u3 := phoneHomeURL(t, vd)
	b.Pending(t, "vm-1", "t3", agentapi.PurposeDeploy) // the machine network-boots again
	curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	if code, _ := form(u3, "hostname=vm-1"); code != 403 {
		t.Errorf("a report-in token outlived the next network boot: %d", code)
	}
	b.Pending(t, "vm-1", "t4", agentapi.PurposeDeploy)
	_, s = curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
	auth = []string{"-H", "Authorization: Bearer " + tokenOf(t, s)}
	_, vd = curl(t, append(auth, ts.URL+"/metadata/vm-1/vendor-data")...)
	if code, msg := curlIn(t, `{"hostname":"vm-1","bootID":"0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"}`, "-H", "Content-Type: application/json", "--data-binary", "@-", phoneHomeURL(t, vd)); code != 204 {
		t.Errorf("JSON report: %d %q", code, msg)
	}
	got = b.Reports("vm-1")
	if last := got[len(got)-1]; last.OS == nil || last.OS.BootID != "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0" {
		t.Errorf("JSON report stored as %+v", last)
	}
}

// Only a deployment of an image that confirms gets a report-in token.
func TestVendorDataWithoutReportIn(t *testing.T) {
	t.Parallel()
	inv := loadInventory(t, "../../examples/lab")
	b := boottest.New(inv, nil)
	ts := newTestServer(t, b)
	vendorData := func() string {
		b.Pending(t, "vm-1", "t", agentapi.PurposeDeploy)
		_, s := curl(t, ts.URL+"/boot/"+vm1MAC+"/script.ipxe")
		_, vd := curl(t, "-H", "Authorization: Bearer "+tokenOf(t, s), ts.URL+"/metadata/vm-1/vendor-data")
		return vd
	}
	b.SetPurpose("vm-1", agentapi.PurposeCommission)
	if vd := vendorData(); strings.Contains(vd, "phone_home") {
		t.Errorf("a commissioning boot got a report-in token:\n%s", vd)
	}
	b.SetPurpose("vm-1", agentapi.PurposeDeploy)
	inv.Images["debian-12"].Spec.Confirm = spec.ConfirmNone
	if vd := vendorData(); strings.Contains(vd, "phone_home") {
		t.Errorf("an image with confirm: none got a report-in token:\n%s", vd)
	}
}

func FuzzOSReport(f *testing.F) {
	f.Add("application/x-www-form-urlencoded", "instance_id=kiln-a-0&hostname=a&fqdn=a.b")
	f.Add("application/json", `{"hostname":"a","bootID":"00ff"}`)
	f.Add("", "hostname=%ZZ")
	f.Fuzz(func(t *testing.T, ct, body string) {
		rep, err := DecodeOSReport(ct, strings.NewReader(body))
		if err != nil {
			return
		}
		for _, v := range []string{rep.Hostname, rep.FQDN, rep.InstanceID, rep.BootID} {
			if strings.ContainsAny(v, "\x00\r\n\x1b\"'` ;:/") && v != rep.InstanceID {
				t.Fatalf("unsafe value accepted: %q", v)
			}
			if strings.ContainsAny(v, "\x00\r\n\x1b\"'` ;/") {
				t.Fatalf("unsafe value accepted: %q", v)
			}
		}
	})
}
