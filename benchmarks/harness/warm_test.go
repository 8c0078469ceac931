package main

import (
	"os"
	"strings"
	"testing"
)

// TestWarmMemory: --warm-memory writes its bytes into the work dir and
// leaves nothing there; with 0 it does nothing, and an unusable dir is an
// error that names the flag.
func TestWarmMemory(t *testing.T) {
	defer func(n int64, d string) { warmBytes, warmDir = n, d }(warmBytes, warmDir)
	warmDir = t.TempDir()

	warmBytes = 0
	if err := warmMemory(); err != nil {
		t.Fatal(err)
	}

	// A size that is not a whole number of the writer's 1 MiB buffers.
	warmBytes = 3<<20 + 5
	var seen int64
	warmHook = func(path string) {
		fi, err := os.Stat(path)
		if err != nil {
			t.Errorf("the warm file is not there before its removal: %v", err)
			return
		}
		seen = fi.Size()
	}
	defer func() { warmHook = nil }()
	if err := warmMemory(); err != nil {
		t.Fatal(err)
	}
	if seen != warmBytes {
		t.Fatalf("wrote %d bytes, want %d", seen, warmBytes)
	}
	if ents, err := os.ReadDir(warmDir); err != nil || len(ents) != 0 {
		t.Fatalf("work dir after warming: %v, %v; want it empty", ents, err)
	}

	warmDir = warmDir + "/missing"
	if err := warmMemory(); err == nil || !strings.Contains(err.Error(), "--warm-memory") {
		t.Fatalf("warming into a missing dir: %v, want an error naming --warm-memory", err)
	}
}
