package agentapi

// FactsVersion is the version of the Facts JSON shape. Fields are only added;
// a change of meaning raises it.
const FactsVersion = 1

// Facts is what the machine agent reports after commissioning.
type Facts struct {
	Version int        `json:"version"`
	Arch    string     `json:"arch"` // GOARCH of the agent: amd64, arm64
	CPU     CPU        `json:"cpu"`
	Memory  Memory     `json:"memory"`
	DMI     DMI        `json:"dmi"`
	Disks   []Disk     `json:"disks"`
	NICs    []NIC      `json:"nics"`
	LLDP    []Neighbor `json:"lldp"`
	// Errors names the collectors that failed and why; the facts of the
	// others are still reported.
	Errors []string `json:"errors,omitempty"`
}

// CPU is the processor.
type CPU struct {
	Model   string `json:"model"`   // "model name" of /proc/cpuinfo
	Count   int    `json:"count"`   // logical CPUs
	Sockets int    `json:"sockets"` // distinct physical ids; 1 when not given
}

// Memory is the RAM the kernel sees.
type Memory struct {
	TotalBytes int64 `json:"totalBytes"` // MemTotal
}

// DMI is the SMBIOS identity, from /sys/class/dmi/id.
type DMI struct {
	Vendor       string `json:"vendor,omitempty"`  // sys_vendor
	Product      string `json:"product,omitempty"` // product_name
	Version      string `json:"version,omitempty"` // product_version
	Serial       string `json:"serial,omitempty"`  // product_serial
	UUID         string `json:"uuid,omitempty"`    // product_uuid
	BoardVendor  string `json:"boardVendor,omitempty"`
	BoardName    string `json:"boardName,omitempty"`
	BoardSerial  string `json:"boardSerial,omitempty"`
	ChassisType  string `json:"chassisType,omitempty"`
	BIOSVendor   string `json:"biosVendor,omitempty"`
	BIOSVersion  string `json:"biosVersion,omitempty"`
	BIOSDate     string `json:"biosDate,omitempty"`
	ChassisAsset string `json:"chassisAssetTag,omitempty"`
}

// Disk is a whole block device (no partitions, loop, RAM, optical or
// device-mapper devices).
type Disk struct {
	Name       string `json:"name"` // kernel name: sda, vda, nvme0n1
	Path       string `json:"path"` // device node: /dev/sda
	SizeBytes  int64  `json:"sizeBytes"`
	Model      string `json:"model,omitempty"`
	Vendor     string `json:"vendor,omitempty"`
	Serial     string `json:"serial,omitempty"`
	WWID       string `json:"wwid,omitempty"`
	Rotational bool   `json:"rotational"`
	Removable  bool   `json:"removable,omitempty"`
	// ByPath is the /dev/disk/by-path name (without the folder): read
	// from /dev/disk/by-path when udev made it, else computed from the
	// sysfs device path the way udev's path_id does for PCI, virtio,
	// NVMe, ATA and SCSI disks; empty when it cannot be told.
	ByPath string `json:"byPath,omitempty"`
	// LogicalBlockSize is the sector size in bytes (usually 512).
	LogicalBlockSize int64 `json:"logicalBlockSize,omitempty"`
}

// NIC is a physical network interface.
type NIC struct {
	Name      string `json:"name"` // kernel name in the ephemeral image: eth0, ens3
	MAC       string `json:"mac"`  // lower-case, colon-separated
	Driver    string `json:"driver,omitempty"`
	PCI       string `json:"pci,omitempty"`       // bus address, e.g. 0000:00:03.0
	SpeedMbps int    `json:"speedMbps,omitempty"` // 0 when unknown or down
	MTU       int    `json:"mtu,omitempty"`
	OperState string `json:"operState,omitempty"` // up, down, unknown…
	Carrier   bool   `json:"carrier"`
}

// Neighbor is what an LLDP frame received on one of the machine's
// interfaces said about the switch port at the other end.
type Neighbor struct {
	Interface       string `json:"interface"` // ours
	MAC             string `json:"mac"`       // ours
	ChassisID       string `json:"chassisID"`
	ChassisIDType   string `json:"chassisIDType"` // mac, network-address, interface-name, local, …
	PortID          string `json:"portID"`
	PortIDType      string `json:"portIDType"`
	PortDescription string `json:"portDescription,omitempty"`
	SystemName      string `json:"systemName,omitempty"`
	TTLSeconds      int    `json:"ttlSeconds"`
}
