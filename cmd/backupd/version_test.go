package main

import (
	"os/exec"
	"strings"
	"testing"
)

// --version reports the version the build set (none in a plain go build:
// devel); make image's test checks one set with -ldflags.
func TestVersionFlag(t *testing.T) {
	out, err := exec.Command(binary, "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "backupd version devel") {
		t.Fatalf("--version: %v\n%s", err, out)
	}
}
