package repo

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/backupd/backupd/pkg/chunk"
)

func TestConfigRoundTripAndRefusals(t *testing.T) {
	c, err := NewConfig(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := encodeConfig(c)
	got, err := decodeConfig(b)
	if err != nil || got != c {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if c.MaxBlobSize(DataBlob) != chunk.DefaultMaxSize || c.MaxBlobSize(TreeBlob) != MaxTreeSize || c.MaxBlobSize(7) != 0 {
		t.Fatal("MaxBlobSize")
	}
	edit := func(f func(c *Config)) []byte {
		c := c
		f(&c)
		b, _ := encodeConfig(c)
		return b
	}
	for name, b := range map[string][]byte{
		"not json":        []byte("{"),
		"too large":       append(bytes.Clone(b[:len(b)-1]), []byte(`,"pad":"`+strings.Repeat("x", MaxConfigSize)+`"}`)...),
		"id not hex":      edit(func(c *Config) { c.ID = "../../../../etc/cron.d/x" }),
		"short id":        edit(func(c *Config) { c.ID = "abc" }),
		"chunk max > cap": edit(func(c *Config) { c.ChunkMaxSize = MaxDataBlobSize + 1 }),
		"pack size":       edit(func(c *Config) { c.PackSize = 1 }),
		"polynomial":      edit(func(c *Config) { c.Polynomial = "4" }),
		"compression":     edit(func(c *Config) { c.Compression = "lz4" }),
		"negative size":   []byte(strings.Replace(string(b), `"chunk_min_size": 524288`, `"chunk_min_size": -1`, 1)),
	} {
		if _, err := decodeConfig(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: decodeConfig = %v, want ErrCorrupt", name, err)
		}
	}
	for _, v := range []int{0, FormatVersion + 1} {
		if _, err := decodeConfig(edit(func(c *Config) { c.Version = v })); !errors.Is(err, ErrVersion) || errors.Is(err, ErrCorrupt) {
			t.Errorf("version %d: %v, want ErrVersion", v, err)
		}
	}
	// Version 1 repositories are read, and written without groups.
	if c, err := decodeConfig(edit(func(c *Config) { c.Version = 1 })); err != nil || c.Groups() {
		t.Errorf("version 1: groups %v, %v", c.Groups(), err)
	}
	// Version 2 repositories are written with groups, without compact trailers.
	if c, err := decodeConfig(edit(func(c *Config) { c.Version = 2 })); err != nil || !c.Groups() || c.CompactTrailers() {
		t.Errorf("version 2: groups %v, compact trailers %v, %v", c.Groups(), c.CompactTrailers(), err)
	}
	if c, err := NewConfig(0, 0); err != nil || c.Version != 3 || !c.Groups() || !c.CompactTrailers() {
		t.Errorf("a new config: version %d, groups %v, compact trailers %v, %v", c.Version, c.Groups(), c.CompactTrailers(), err)
	}
}

func FuzzDecodeConfig(f *testing.F) {
	c, err := NewConfig(0, 0)
	if err != nil {
		f.Fatal(err)
	}
	good, _ := encodeConfig(c)
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte(strings.Replace(string(good), `"version": 1`, `"version": 2`, 1)))
	f.Add([]byte(strings.Replace(string(good), `"pack_size": 16777216`, `"pack_size": 16777216, "pack_size": 1`, 1)))
	f.Fuzz(func(t *testing.T, b []byte) {
		var c Config
		var err error
		n := allocated(func() { c, err = decodeConfig(b) })
		if n > 8*uint64(len(b))+64<<10 {
			t.Fatalf("decoding %d bytes allocated %d", len(b), n)
		}
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
				t.Fatalf("error wraps neither ErrCorrupt nor ErrVersion: %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted a config Validate refuses: %v", err)
		}
		if _, err := c.ChunkParams(); err != nil {
			t.Fatalf("accepted a config without chunker parameters: %v", err)
		}
		enc, _ := encodeConfig(c)
		c2, err := decodeConfig(enc)
		if err != nil || c2 != c {
			t.Fatalf("re-encoded config: %+v, %v", c2, err)
		}
	})
}
