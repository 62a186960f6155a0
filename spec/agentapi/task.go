package agentapi

import (
	"time"

	"github.com/kilnhq/kiln/spec"
)

// MaxFastTrackWindow bounds the region's fast-track window (kiln server
// --fast-track-window): after commissioning, the agent asks for a next
// task while the purpose is still commission, for at least this long.
const MaxFastTrackWindow = 30 * time.Minute

// Task tells the machine agent what to do.
type Task struct {
	Machine  string             `json:"machine"`
	Purpose  string             `json:"purpose"`
	BootID   string             `json:"bootID,omitempty"`
	Image    *TaskImage         `json:"image,omitempty"`    // deploy
	RootDisk *spec.DiskSelector `json:"rootDisk,omitempty"` // deploy
	Erase    string             `json:"erase,omitempty"`    // erase: quick, full, secure
	// MetadataURL is the NoCloud seed (ds=nocloud;s=…) the deployed OS
	// reads its cloud-init data from; it carries the token.
	MetadataURL string `json:"metadataURL,omitempty"`
}

// TaskImage is the OS image to write, from the rack's image cache.
type TaskImage struct {
	Name   string `json:"name"`
	URL    string `json:"url"`
	SHA256 string `json:"sha256"`
	Format string `json:"format"` // raw, raw.gz, raw.zst
}
