package agentapi

// Boot purposes: what a machine does on its next network boot. The region
// sets one on the machine's status; the boot server renders it.
const (
	PurposeDiscover   = "discover"   // unknown MAC: boot the ephemeral image and report facts
	PurposeCommission = "commission" // inventory the hardware
	PurposeDeploy     = "deploy"     // write the OS image to the root disk
	PurposeErase      = "erase"      // wipe the disks
	PurposeLocal      = "local"      // boot from the local disk
	PurposeOff        = "off"        // power off
)

// Purposes lists every purpose.
var Purposes = []string{PurposeDiscover, PurposeCommission, PurposeDeploy, PurposeErase, PurposeLocal, PurposeOff}

// Ephemeral reports whether the purpose boots the ephemeral image (and so
// runs the machine agent).
func Ephemeral(purpose string) bool {
	switch purpose {
	case PurposeDiscover, PurposeCommission, PurposeDeploy, PurposeErase:
		return true
	}
	return false
}
