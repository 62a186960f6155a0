package spec

import (
	"reflect"
	"strings"
	"testing"
	"testing/fstest"
)

const baseDocs = `apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r1}
spec: {allowPlaintextPasswords: true}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: net}
spec: {cidr: 10.0.0.0/24, rack: r1, gateway: 10.0.0.1}
---
apiVersion: kiln.dev/v1alpha1
kind: Image
metadata: {name: ubuntu}
spec:
  purpose: os
  disk: {url: "http://images.example/ubuntu.raw.zst", sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855}
---
apiVersion: kiln.dev/v1alpha1
kind: Image
metadata: {name: debian}
spec:
  purpose: os
  disk: {url: "http://images.example/debian.raw.gz", sha256: 4f2a8c1d9e7b3a5f6c0d8e2b1a9f7c3e5d4b6a8c0e2f4a6b8d0c2e4f6a8b0c2d}
`

const profileDoc = `apiVersion: kiln.dev/v1alpha1
kind: Profile
metadata: {name: compute}
spec:
  selector: {matchLabels: {class: compute}}
  machine:
    firmware: bios
    image: ubuntu
    state: deployed
    erase: quick
    maintenance: true
    bmc:
      driver: ipmi
      username: admin
      password: {fromFile: /etc/kiln/compute.pw}
      options: {cipherSuite: "17", privilege: ADMINISTRATOR}
    rootDisk: {minSize: 100G, prefer: largest}
    userDataFile: user-data/compute.yaml
`

func machineDoc(name, mac, extra string) string {
	return `apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: ` + name + `, labels: {class: compute}}
spec:
  interfaces: [{name: eno1, mac: "` + mac + `", subnet: net}]
` + extra
}

func profileFS() fstest.MapFS {
	return fstest.MapFS{
		"base.yaml":                       {Data: []byte(baseDocs)},
		"profiles/compute.yaml":           {Data: []byte(profileDoc)},
		"profiles/user-data/compute.yaml": {Data: []byte("#cloud-config\nhostname: compute\n")},
		"racks/r1/user-data/own.yaml":     {Data: []byte("#cloud-config\nhostname: own\n")},
		"racks/r1/machines.yaml": {Data: []byte(strings.Join([]string{
			machineDoc("plain", "52:54:00:00:00:01", "  bmc: {address: 10.0.0.101}\n"),
			machineDoc("own", "52:54:00:00:00:02", `  firmware: uefi
  image: debian
  erase: none
  maintenance: false
  bmc:
    driver: redfish
    address: https://10.0.0.102
    password: {fromEnv: OWN_PW}
    options: {privilege: OPERATOR, systemID: /redfish/v1/Systems/1}
  rootDisk: {model: SAMSUNG MZ7L3480}
  userDataFile: user-data/own.yaml
`),
			machineDoc("inline", "52:54:00:00:00:03", `  bmc: {address: 10.0.0.103, password: plaintext}
  userData: "#!/bin/sh\necho hi\n"
`),
		}, "---\n"))},
	}
}

func TestProfiles(t *testing.T) {
	r := Load(profileFS())
	for _, p := range r.Problems {
		if p.Severity == Error {
			t.Error(p)
		}
	}
	inv := r.Inventory

	plain := inv.Machines["plain"].Spec
	if plain.Profile != "compute" || plain.Firmware != "bios" || plain.Image != "ubuntu" || plain.State != StateDeployed || !plain.InMaintenance() {
		t.Errorf("plain did not take the profile: %+v", plain)
	}
	if plain.Rack != "r1" || plain.Arch != "amd64" {
		t.Errorf("plain: defaults not applied: rack %q arch %q", plain.Rack, plain.Arch)
	}
	if got := plain.BMC.Password; got == nil || *got != (SecretRef{FromFile: "/etc/kiln/compute.pw"}) {
		t.Errorf("plain: password %+v", got)
	}
	// userDataFile is relative to the file that sets it: the profile's.
	if plain.UserData != "#cloud-config\nhostname: compute\n" {
		t.Errorf("plain: user-data %q", plain.UserData)
	}

	own := inv.Machines["own"].Spec
	if own.Firmware != "uefi" || own.Image != "debian" || own.Erase != "none" || own.InMaintenance() || own.BMC.Driver != "redfish" {
		t.Errorf("own: the machine's fields must win: %+v %+v", own, own.BMC)
	}
	if own.BMC.Username != "admin" {
		t.Errorf("own: fields the machine leaves out come from the profile: username %q", own.BMC.Username)
	}
	wantOpts := map[string]string{"cipherSuite": "17", "privilege": "OPERATOR", "systemID": "/redfish/v1/Systems/1"}
	if !reflect.DeepEqual(own.BMC.Options, wantOpts) {
		t.Errorf("own: maps merge with the machine winning: got %v, want %v", own.BMC.Options, wantOpts)
	}
	if got := own.BMC.Password; got == nil || *got != (SecretRef{FromEnv: "OWN_PW"}) {
		t.Errorf("own: a machine's password replaces the profile's whole, got %+v", got)
	}
	if rd := own.RootDisk; rd.Model != "SAMSUNG MZ7L3480" || rd.MinSize != 100e9 || rd.Prefer != "largest" {
		t.Errorf("own: root disk selectors merge: %+v", rd)
	}
	if own.UserData != "#cloud-config\nhostname: own\n" {
		t.Errorf("own: user-data %q", own.UserData)
	}

	inline := inv.Machines["inline"].Spec
	if got := inline.BMC.Password; got == nil || *got != (SecretRef{Value: "plaintext"}) {
		t.Errorf("inline: a plaintext password replaces the profile's reference whole, got %+v", got)
	}
	if inline.UserDataFile != "" || !strings.HasPrefix(inline.UserData, "#!/bin/sh") {
		t.Errorf("inline: the machine's userData replaces the profile's userDataFile: %q %q", inline.UserDataFile, inline.UserData)
	}
	if !strings.Contains(r.Problems.String(), "racks/r1/machines.yaml:30:40: warning: spec.bmc.password: plaintext password") {
		t.Errorf("no plaintext warning:\n%s", r.Problems)
	}

	// The profile itself is untouched by the machines using it.
	pr := inv.Profiles["compute"].Spec.Machine
	if pr.BMC.Password.FromEnv != "" || pr.BMC.Options["systemID"] != "" || pr.UserData != "" {
		t.Errorf("the profile was modified: %+v %+v", pr, pr.BMC)
	}
	// Machines share nothing mutable with the profile or each other.
	inv.Machines["plain"].Spec.BMC.Options["x"] = "y"
	inv.Machines["plain"].Spec.RootDisk.Model = "changed"
	if _, ok := inv.Profiles["compute"].Spec.Machine.BMC.Options["x"]; ok || inv.Profiles["compute"].Spec.Machine.RootDisk.Model != "" {
		t.Errorf("a machine shares maps or pointers with its profile")
	}
}

// TestLoaderDoesNotMutateCache loads twice with one Loader: resolution
// works on copies, so the cached decoded objects stay as they were read.
func TestLoaderDoesNotMutateCache(t *testing.T) {
	fsys := profileFS()
	l := new(Loader)
	r1 := l.Load(fsys)
	r2 := l.Load(fsys)
	if !reflect.DeepEqual(r1.Inventory, r2.Inventory) {
		t.Errorf("the second load differs from the first")
	}
	if r1.Problems.String() != r2.Problems.String() || r1.Digest != r2.Digest {
		t.Errorf("problems or digest differ:\n%s\n%s", r1.Problems, r2.Problems)
	}
	// The cache holds what a fresh decode gives.
	for name, pf := range l.cache {
		fresh := new(Loader).parse(name, fsys[name].Data)
		if !reflect.DeepEqual(pf.objects, fresh.objects) {
			t.Errorf("%s: cached objects were modified", name)
		}
	}
	m := l.cache["racks/r1/machines.yaml"].objects[0].(*Machine)
	if m.Spec.Profile != "" || m.Spec.BMC.Driver != "" || m.Spec.Rack != "" || m.Spec.Firmware != "" {
		t.Errorf("cached machine was resolved in place: %+v", m.Spec)
	}
	// Results don't share memory either.
	r1.Inventory.Machines["plain"].Spec.Interfaces[0].IP = "10.0.0.99"
	if r2.Inventory.Machines["plain"].Spec.Interfaces[0].IP != "" {
		t.Errorf("two results share a machine")
	}
}

func TestLoaderCache(t *testing.T) {
	fsys := fstest.MapFS{
		"base.yaml":     {Data: []byte(baseDocs)},
		"machines.yaml": {Data: []byte(machineDoc("m1", "52:54:00:00:00:01", "  bmc: {driver: manual}\n"))},
	}
	l := new(Loader)
	r1 := l.Load(fsys)
	if len(r1.Problems) != 0 {
		t.Fatalf("problems:\n%s", r1.Problems)
	}
	base := l.cache["base.yaml"]

	r2 := l.Load(fsys)
	if r2.Digest != r1.Digest {
		t.Errorf("unchanged content: digest %s, then %s", r1.Digest, r2.Digest)
	}
	if l.cache["base.yaml"] != base {
		t.Errorf("an unchanged file was decoded again")
	}

	fsys["machines.yaml"] = &fstest.MapFile{Data: []byte(machineDoc("m1", "52:54:00:00:00:01", "  bmc: {driver: manual}\n  firmware: bios\n"))}
	r3 := l.Load(fsys)
	if r3.Digest == r1.Digest {
		t.Errorf("an edit did not change the digest")
	}
	if got := r3.Inventory.Machines["m1"].Spec.Firmware; got != "bios" {
		t.Errorf("the edit is not seen: firmware %q", got)
	}
	if l.cache["base.yaml"] != base {
		t.Errorf("an unchanged file was decoded again after another file's edit")
	}

	// Same content, same digest, whatever the Loader.
	if d := new(Loader).Load(fsys).Digest; d != r3.Digest {
		t.Errorf("a fresh loader gives digest %s, want %s", d, r3.Digest)
	}
	// Renaming a file changes the digest: paths are part of it.
	fsys["machines2.yaml"] = fsys["machines.yaml"]
	delete(fsys, "machines.yaml")
	r4 := l.Load(fsys)
	if r4.Digest == r3.Digest {
		t.Errorf("a rename did not change the digest")
	}
	if _, ok := l.cache["machines.yaml"]; ok {
		t.Errorf("a removed file stays cached")
	}
	// An edit that breaks a file shows, and fixing it back restores all.
	fsys["machines2.yaml"] = &fstest.MapFile{Data: []byte("kind: [\n")}
	r5 := l.Load(fsys)
	if r5.Problems.Errors() == 0 || len(r5.Inventory.Machines) != 0 {
		t.Errorf("broken edit: %d machines, problems:\n%s", len(r5.Inventory.Machines), r5.Problems)
	}
	fsys["machines2.yaml"] = &fstest.MapFile{Data: []byte(machineDoc("m1", "52:54:00:00:00:01", "  bmc: {driver: manual}\n  firmware: bios\n"))}
	r6 := l.Load(fsys)
	if r6.Digest != r4.Digest || len(r6.Problems) != 0 {
		t.Errorf("after fixing: digest %s (want %s), problems:\n%s", r6.Digest, r4.Digest, r6.Problems)
	}
}
