package vbmc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Backends.
const (
	BackendMemory = "memory"
	BackendQEMU   = "qemu"
)

// VMConfig is one virtual BMC and its machine, as `kiln vbmc` runs it: one
// entry of the configuration file, or the command's flags.
type VMConfig struct {
	Name           string        `yaml:"name"`
	IPMI           string        `yaml:"ipmi"`       // UDP address, e.g. 127.0.0.1:6230
	Redfish        string        `yaml:"redfish"`    // HTTP address
	RedfishTLS     string        `yaml:"redfishTLS"` // HTTPS address
	Admin          string        `yaml:"admin"`      // admin-API-only HTTP address
	TLSCert        string        `yaml:"tlsCert"`
	TLSKey         string        `yaml:"tlsKey"`
	TLSHosts       []string      `yaml:"tlsHosts"`
	CertOut        string        `yaml:"certOut"`
	Username       string        `yaml:"username"` // default admin
	Password       string        `yaml:"password"`
	PasswordFile   string        `yaml:"passwordFile"` // instead of password; a trailing newline is dropped
	SessionTimeout time.Duration `yaml:"sessionTimeout"`
	DisableIPMI15  bool          `yaml:"disableIPMI15"`
	Backend        string        `yaml:"backend"` // memory (default) or qemu
	QEMU           QEMUConfig    `yaml:"qemu"`
	Faults         Faults        `yaml:"faults"`
}

// ConfigFile is the `kiln vbmc --config` file, YAML or JSON:
//
//	vms:
//	  - name: vm-1
//	    ipmi: 127.0.0.1:6231
//	    redfish: 127.0.0.1:8001
//	    passwordFile: vbmc-password
//	    backend: qemu
//	    qemu: {memory: 1G, nics: [{tap: tap-vm1, mac: "52:54:00:42:00:01"}]}
//	  - name: vm-2  # UEFI, network boot through OVMF's own PXE
//	    ipmi: 127.0.0.1:6232
//	    passwordFile: vbmc-password
//	    backend: qemu
//	    qemu: {firmware: /usr/share/ovmf/OVMF.fd, disableNICROM: true, nics: [{tap: tap-vm2}]}
type ConfigFile struct {
	VMs []VMConfig `yaml:"vms"`
}

// LoadConfig reads a configuration file. Relative paths in it (password
// file, certificates, state folders, plain disk paths) are relative to the
// file's folder.
func LoadConfig(path string) ([]VMConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	vms, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	dir := filepath.Dir(path)
	rel := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	for i := range vms {
		v := &vms[i]
		rel(&v.PasswordFile)
		rel(&v.TLSCert)
		rel(&v.TLSKey)
		rel(&v.CertOut)
		rel(&v.QEMU.StateDir)
		for j := range v.QEMU.Disks {
			if !strings.Contains(v.QEMU.Disks[j], "=") {
				rel(&v.QEMU.Disks[j])
			}
		}
	}
	return vms, nil
}

// ParseConfig decodes a configuration file strictly: unknown fields are
// errors.
func ParseConfig(data []byte) ([]VMConfig, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f ConfigFile
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty configuration")
		}
		return nil, err
	}
	if len(f.VMs) == 0 {
		return nil, errors.New("no vms")
	}
	seen := map[string]bool{}
	for i, v := range f.VMs {
		if v.Name == "" {
			return nil, fmt.Errorf("vms[%d]: no name", i)
		}
		if seen[v.Name] {
			return nil, fmt.Errorf("vms[%d]: name %q used twice", i, v.Name)
		}
		seen[v.Name] = true
		switch v.Backend {
		case "", BackendMemory, BackendQEMU:
		default:
			return nil, fmt.Errorf("vm %s: backend %q: use memory or qemu", v.Name, v.Backend)
		}
		if err := v.Faults.Validate(); err != nil {
			return nil, fmt.Errorf("vm %s: %w", v.Name, err)
		}
		if v.Backend == BackendQEMU {
			if err := v.QEMU.Validate(); err != nil {
				return nil, fmt.Errorf("vm %s: qemu: %w", v.Name, err)
			}
		}
	}
	return f.VMs, nil
}

// VM is a virtual BMC with the machine it owns.
type VM struct {
	bmc *BMC
	m   Machine
}

// NewVM builds the machine and its BMC (listeners bound); Run serves.
func NewVM(c VMConfig, log *slog.Logger) (*VM, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	password := c.Password
	if c.PasswordFile != "" {
		if password != "" {
			return nil, fmt.Errorf("vm %s: give password or passwordFile, not both", c.Name)
		}
		b, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("vm %s: %w", c.Name, err)
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	if c.Username == "" {
		c.Username = "admin"
	}
	var m Machine
	switch c.Backend {
	case "", BackendMemory:
		m = NewMemory()
	case BackendQEMU:
		qc := c.QEMU
		qc.Name, qc.Logger = c.Name, log
		q, err := NewQEMU(qc)
		if err != nil {
			return nil, fmt.Errorf("vm %s: %w", c.Name, err)
		}
		m = q
	default:
		return nil, fmt.Errorf("vm %s: backend %q: use memory or qemu", c.Name, c.Backend)
	}
	b, err := New(Config{
		Name: c.Name, Username: c.Username, Password: password,
		IPMIAddr: c.IPMI, RedfishAddr: c.Redfish, RedfishTLSAddr: c.RedfishTLS, AdminAddr: c.Admin,
		TLSCertFile: c.TLSCert, TLSKeyFile: c.TLSKey, TLSHosts: c.TLSHosts, CertOut: c.CertOut,
		SessionTimeout: c.SessionTimeout, DisableIPMI15: c.DisableIPMI15, Faults: c.Faults, Logger: log,
	}, m)
	if err != nil {
		m.Close()
		return nil, err
	}
	return &VM{bmc: b, m: m}, nil
}

// BMC is the VM's virtual BMC.
func (v *VM) BMC() *BMC { return v.bmc }

// Machine is the VM's machine.
func (v *VM) Machine() Machine { return v.m }

// Run serves until ctx ends, then stops the machine (a running QEMU VM is
// stopped hard).
func (v *VM) Run(ctx context.Context) error {
	err := v.bmc.Run(ctx)
	return errors.Join(err, v.m.Close())
}

// Close releases a VM that never ran.
func (v *VM) Close() error {
	return errors.Join(v.bmc.Close(), v.m.Close())
}
