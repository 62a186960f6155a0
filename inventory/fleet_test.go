package inventory

import (
	"fmt"
	"strings"
	"testing/fstest"
)

// fleet generates an inventory of n machines spread over racks of at most
// 20,000 machines, one file per 1,000 machines. zone is written into every
// machine so tests can tell revisions apart.
func fleet(n int, zone string) fstest.MapFS {
	fsys := fstest.MapFS{}
	racks := (n + 19999) / 20000
	var b strings.Builder
	for r := 0; r < max(racks, 1); r++ {
		fmt.Fprintf(&b, `apiVersion: kiln.dev/v1alpha1
kind: Rack
metadata: {name: r%d}
spec: {zone: z%d}
---
apiVersion: kiln.dev/v1alpha1
kind: Subnet
metadata: {name: net%d}
spec:
  cidr: 10.%d.0.0/16
  rack: r%d
  gateway: 10.%d.0.1
  dynamicRange: {start: 10.%d.255.1, end: 10.%d.255.250}
---
`, r, r, r, r, r, r, r, r)
	}
	b.WriteString(`apiVersion: kiln.dev/v1alpha1
kind: Image
metadata: {name: os}
spec:
  purpose: os
  disk: {url: "http://images.example/os.raw.gz", sha256: "9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9"}
---
apiVersion: kiln.dev/v1alpha1
kind: Profile
metadata: {name: compute}
spec:
  selector: {matchLabels: {class: compute}}
  machine:
    image: os
    bmc: {driver: ipmi, username: admin, password: {fromEnv: BMC_PASSWORD}}
`)
	fsys["fleet.yaml"] = &fstest.MapFile{Data: []byte(b.String())}
	for start := 0; start < n; start += 1000 {
		b.Reset()
		for i := start; i < min(start+1000, n); i++ {
			r := i / 20000
			host := i%20000 + 2
			fmt.Fprintf(&b, `---
apiVersion: kiln.dev/v1alpha1
kind: Machine
metadata: {name: m%06d, labels: {class: compute}}
spec:
  zone: %s
  state: deployed
  interfaces:
    - {name: eno1, mac: "02:00:00:%02x:%02x:%02x", subnet: net%d, ip: 10.%d.%d.%d}
  bmc: {address: "10.250.%d.%d"}
`, i, zone, byte(i>>16), byte(i>>8), byte(i), r, r, host/256, host%256, host/256, host%256)
		}
		fsys[fmt.Sprintf("machines/%06d.yaml", start)] = &fstest.MapFile{Data: []byte(b.String())}
	}
	return fsys
}
