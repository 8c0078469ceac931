package sync

import (
	"fmt"
	"strconv"
	"strings"
)

// IDMap maps numeric user or group ids between a container's user
// namespace and the host, like /proc/PID/uid_map: each range maps
// Container..Container+Count-1 to Host..Host+Count-1. A backup maps host
// ids to container ids (snapshots hold container ids, so they restore on any
// node); a restore maps them back. Ids outside every range are kept as
// they are.
type IDMap []IDRange

// IDRange is one contiguous mapping.
type IDRange struct {
	Container, Host, Count uint32
}

// ParseIDRange parses "CONTAINER:HOST:COUNT".
func ParseIDRange(s string) (IDRange, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return IDRange{}, fmt.Errorf("id map %q: want CONTAINER:HOST:COUNT", s)
	}
	var v [3]uint32
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 32)
		if err != nil {
			return IDRange{}, fmt.Errorf("id map %q: %q is not a number", s, p)
		}
		v[i] = uint32(n)
	}
	r := IDRange{Container: v[0], Host: v[1], Count: v[2]}
	if err := r.Validate(); err != nil {
		return IDRange{}, fmt.Errorf("id map %q: %w", s, err)
	}
	return r, nil
}

// Validate checks that the range is not empty and fits in 32 bits.
func (r IDRange) Validate() error {
	if r.Count == 0 || uint64(r.Container)+uint64(r.Count) > 1<<32 || uint64(r.Host)+uint64(r.Count) > 1<<32 {
		return fmt.Errorf("count must be at least 1 and the ranges within 32 bits")
	}
	return nil
}

// ToContainer maps a host id into the container.
func (m IDMap) ToContainer(id uint32) uint32 {
	for _, r := range m {
		if id >= r.Host && id-r.Host < r.Count {
			return r.Container + (id - r.Host)
		}
	}
	return id
}

// ToHost maps a container id to the host.
func (m IDMap) ToHost(id uint32) uint32 {
	for _, r := range m {
		if id >= r.Container && id-r.Container < r.Count {
			return r.Host + (id - r.Container)
		}
	}
	return id
}
