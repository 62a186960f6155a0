package inventory

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// ImageStatus is one rack's view of an Image: whether its files are in
// the rack's cache, verified, or why not.
type ImageStatus struct {
	Rack    string `json:"rack"`
	State   string `json:"state"` // ready, fetching, failed, missing
	Message string `json:"message,omitempty"`
	// SHA256s are the files' hashes the state is about, so that a record
	// of an Image's earlier files is not taken for its current ones.
	SHA256s   []string  `json:"sha256s,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// PutImageStatus records an Image's state on one rack.
func (s *Store) PutImageStatus(ctx context.Context, image string, st ImageStatus) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if st.Rack == "" {
		return fmt.Errorf("image status of %s: no rack", image)
	}
	_, err = s.cli.Put(ctx, s.keys.ImageStatus(st.Rack, image), string(b))
	return err
}

// ImageStatuses reads every rack's record of every Image, by image name.
func (s *Store) ImageStatuses(ctx context.Context) (map[string][]ImageStatus, error) {
	out := map[string][]ImageStatus{}
	_, err := s.rangeAll(ctx, s.keys.ImageStatus("", ""), 0, func(k, v []byte) error {
		_, image, ok := s.keys.SplitImageStatus(string(k))
		if !ok {
			return nil
		}
		var st ImageStatus
		if err := json.Unmarshal(v, &st); err != nil {
			return fmt.Errorf("decode %s: %w", k, err)
		}
		out[image] = append(out[image], st)
		return nil
	})
	return out, err
}
