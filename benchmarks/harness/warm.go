package main

import (
	"fmt"
	"os"
	"path/filepath"
)

// warmBytes is --warm-memory: how much warmMemory writes and removes
// before each timed step (0: nothing).
var warmBytes int64

// warmDir is where warmMemory writes: the harness's work directory (--tmp).
var warmDir string

// warmHook, if set, is called with the warm file's path once it is
// written, before it is removed (for tests).
var warmHook func(path string)

// warmMemory writes warmBytes of zeros to a file in warmDir and removes
// it, untimed, so that the timed step after it gets pages the guest has
// just used. On a virtual machine whose host takes back free memory
// (virtio-balloon free page reporting, as on the machine RESULTS.md
// section 25 measured), memory not touched lately costs several times
// more to write the first time, and a step that grows the memory in use
// (MinIO storing a stop's packs in tmpfs, a restore into tmpfs) pays that
// cost, more or less of it from run to run.
func warmMemory() error {
	if warmBytes <= 0 {
		return nil
	}
	f, err := os.CreateTemp(warmDir, "warm-memory-")
	if err != nil {
		return fmt.Errorf("--warm-memory: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 1<<20)
	for left := warmBytes; left > 0; left -= int64(len(buf)) {
		if _, err := f.Write(buf[:min(left, int64(len(buf)))]); err != nil {
			return fmt.Errorf("--warm-memory: write %s: %w", filepath.Base(f.Name()), err)
		}
	}
	if warmHook != nil {
		warmHook(f.Name())
	}
	return nil
}
