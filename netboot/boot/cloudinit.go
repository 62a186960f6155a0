package boot

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/kilnhq/kiln/inventory"
	"github.com/kilnhq/kiln/spec"
	"github.com/kilnhq/kiln/spec/agentapi"
	"gopkg.in/yaml.v3"
)

// metadata serves GET /metadata/{machine}/{file}: the NoCloud files.
func (s *Server) metadata(w http.ResponseWriter, r *http.Request) {
	name, file := r.PathValue("machine"), r.PathValue("file")
	switch file {
	case "meta-data", "user-data", "vendor-data", "network-config":
	default:
		http.Error(w, fmt.Sprintf("no such NoCloud file %q (meta-data, user-data, vendor-data, network-config)", file), http.StatusNotFound)
		return
	}
	// The deployed OS fetches its metadata from its own address, not the
	// ephemeral boot's: a deploy boot's token is also accepted from it.
	deployAddrs := func(t inventory.BootToken) []netip.Addr {
		if t.Purpose != agentapi.PurposeDeploy {
			return nil
		}
		if m, ok := s.backend.Machine(name); ok {
			return s.machineAddrs(m)
		}
		return nil
	}
	if _, ok := s.checkAuth(w, r, name, deployAddrs); !ok {
		return
	}
	m, ok := s.backend.Machine(name)
	if !ok {
		http.Error(w, "no machine "+name+" in the inventory", http.StatusNotFound)
		return
	}
	var body []byte
	var err error
	switch file {
	case "meta-data":
		body = MetaData(m)
	case "user-data":
		body = UserData(m)
	case "vendor-data":
		body, err = s.vendorData(r.Context(), s.agentURL(r), m)
		if err != nil {
			s.log.Error("render metadata", "machine", name, "file", file, "err", err)
			http.Error(w, "cannot render vendor-data now, try again", http.StatusServiceUnavailable)
			return
		}
	case "network-config":
		body, err = NetworkConfig(m, s.backend.Subnet)
	}
	if err != nil {
		s.log.Error("render metadata", "machine", name, "file", file, "err", err)
		http.Error(w, fmt.Sprintf("render %s of %s: %v", file, name, err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/yaml; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(body)
	s.backend.Record(name, EventMetadata, file)
}

// MetaData is the NoCloud meta-data. The instance ID changes with each
// deploy generation, so cloud-init runs its first-boot modules again after
// a redeploy and not on every reboot.
func MetaData(m *spec.Machine) []byte {
	b, _ := yaml.Marshal(struct {
		InstanceID    string `yaml:"instance-id"`
		LocalHostname string `yaml:"local-hostname"`
	}{
		InstanceID:    fmt.Sprintf("kiln-%s-%d", m.Metadata.Name, m.Spec.DeployGeneration),
		LocalHostname: m.Metadata.Name,
	})
	return b
}

// UserData is the machine's user-data, or a minimal #cloud-config.
func UserData(m *spec.Machine) []byte {
	if m.Spec.UserData != "" {
		return []byte(m.Spec.UserData)
	}
	return []byte("#cloud-config\nhostname: " + m.Metadata.Name + "\n")
}

// Network config version 2 (netplan's format, as cloud-init reads it).
type netConfig struct {
	Network netV2 `yaml:"network"`
}

type netV2 struct {
	Version   int                 `yaml:"version"`
	Ethernets map[string]ethernet `yaml:"ethernets,omitempty"`
	Bonds     map[string]bond     `yaml:"bonds,omitempty"`
	VLANs     map[string]vlan     `yaml:"vlans,omitempty"`
}

type addressing struct {
	DHCP4       bool         `yaml:"dhcp4,omitempty"`
	Addresses   []string     `yaml:"addresses,omitempty"`
	Gateway4    string       `yaml:"gateway4,omitempty"`
	Nameservers *nameservers `yaml:"nameservers,omitempty"`
	MTU         int          `yaml:"mtu,omitempty"`
}

type nameservers struct {
	Addresses []string `yaml:"addresses,omitempty"`
	Search    []string `yaml:"search,omitempty"`
}

type ethernet struct {
	Match      map[string]string `yaml:"match"`
	SetName    string            `yaml:"set-name"`
	addressing `yaml:",inline"`
}

type bond struct {
	Interfaces []string          `yaml:"interfaces"`
	Parameters map[string]string `yaml:"parameters,omitempty"`
	addressing `yaml:",inline"`
}

type vlan struct {
	ID         int    `yaml:"id"`
	Link       string `yaml:"link"`
	addressing `yaml:",inline"`
}

// NetworkConfig renders the machine's interfaces, bonds and VLANs as
// network-config version 2. Interfaces on a subnet get its static address
// (or DHCP when the IP is empty or auto), its DNS servers and search
// domain; the first one whose subnet has a gateway carries the default
// route (one default route per machine).
func NetworkConfig(m *spec.Machine, subnet func(string) (*spec.Subnet, bool)) ([]byte, error) {
	nc := netConfig{Network: netV2{Version: 2}}
	ad := &addresser{subnet: subnet}
	for _, i := range m.Spec.Interfaces {
		a, err := ad.addressing("interface "+i.Name, i.Subnet, i.IP, i.MTU)
		if err != nil {
			return nil, err
		}
		if nc.Network.Ethernets == nil {
			nc.Network.Ethernets = map[string]ethernet{}
		}
		nc.Network.Ethernets[i.Name] = ethernet{
			Match:      map[string]string{"macaddress": strings.ToLower(i.MAC)},
			SetName:    i.Name,
			addressing: a,
		}
	}
	for _, b := range m.Spec.Bonds {
		a, err := ad.addressing("bond "+b.Name, b.Subnet, b.IP, b.MTU)
		if err != nil {
			return nil, err
		}
		if nc.Network.Bonds == nil {
			nc.Network.Bonds = map[string]bond{}
		}
		bd := bond{Interfaces: b.Interfaces, addressing: a}
		if b.Mode != "" {
			bd.Parameters = map[string]string{"mode": b.Mode}
		}
		nc.Network.Bonds[b.Name] = bd
	}
	for _, v := range m.Spec.VLANs {
		name := v.Name
		if name == "" {
			name = fmt.Sprintf("%s.%d", v.Link, v.ID)
		}
		a, err := ad.addressing("vlan "+name, v.Subnet, v.IP, 0)
		if err != nil {
			return nil, err
		}
		if nc.Network.VLANs == nil {
			nc.Network.VLANs = map[string]vlan{}
		}
		nc.Network.VLANs[name] = vlan{ID: v.ID, Link: v.Link, addressing: a}
	}
	b, err := yaml.Marshal(nc)
	if err != nil {
		return nil, fmt.Errorf("encode network-config: %w", err)
	}
	return b, nil
}

// addresser addresses one machine's links in order: the first static
// address on a subnet with a gateway gets the default route.
type addresser struct {
	subnet      func(string) (*spec.Subnet, bool)
	haveGateway bool
}

// addressing is the addressing of one link (what names it in errors) on
// the named subnet: none without a subnet, DHCP for an empty or auto IP,
// else the static address with the subnet's prefix, gateway and DNS.
func (ad *addresser) addressing(what, subnetName, ip string, mtu int) (addressing, error) {
	a := addressing{MTU: mtu}
	if subnetName == "" {
		return a, nil
	}
	sn, ok := ad.subnet(subnetName)
	if !ok {
		return a, fmt.Errorf("%s: subnet %q is not in the inventory", what, subnetName)
	}
	if a.MTU == 0 && sn.Spec.MTU > 0 && sn.Spec.MTU != 1500 {
		a.MTU = sn.Spec.MTU
	}
	if ip == "" || ip == "auto" {
		a.DHCP4 = true
		return a, nil
	}
	prefix, err := netip.ParsePrefix(sn.Spec.CIDR)
	if err != nil {
		return a, fmt.Errorf("%s: subnet %s: %w", what, subnetName, err)
	}
	ipAddr, err := netip.ParseAddr(strings.TrimSpace(ip))
	if err != nil {
		return a, fmt.Errorf("%s: ip %q: %w", what, ip, err)
	}
	a.Addresses = []string{netip.PrefixFrom(ipAddr, prefix.Bits()).String()}
	if sn.Spec.Gateway != "" && !ad.haveGateway {
		a.Gateway4, ad.haveGateway = sn.Spec.Gateway, true
	}
	if len(sn.Spec.DNS) > 0 || sn.Spec.Domain != "" {
		a.Nameservers = &nameservers{Addresses: sn.Spec.DNS}
		if sn.Spec.Domain != "" {
			a.Nameservers.Search = []string{sn.Spec.Domain}
		}
	}
	return a, nil
}

// machineAddrs are the addresses the machine may speak from once
// deployed: its declared static addresses and what Kiln's DHCP gave one
// of its MACs.
func (s *Server) machineAddrs(m *spec.Machine) []netip.Addr {
	var out []netip.Addr
	add := func(ip string) {
		if p, err := netip.ParsePrefix(ip); err == nil {
			out = append(out, p.Addr().Unmap())
		} else if a, err := netip.ParseAddr(ip); err == nil {
			out = append(out, a.Unmap())
		}
	}
	for _, i := range m.Spec.Interfaces {
		add(i.IP)
		if a, ok := s.backend.LeaseIP(strings.ToLower(i.MAC)); ok {
			out = append(out, a.Unmap())
		}
	}
	for _, b := range m.Spec.Bonds {
		add(b.IP)
	}
	for _, v := range m.Spec.VLANs {
		add(v.IP)
	}
	return out
}
