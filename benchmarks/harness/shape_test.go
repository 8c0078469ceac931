package main

import (
	"strings"
	"testing"
)

// TestTbfArgs checks --net-shape's tc command: a rate in bits per second
// from one in bytes, on lo's root, with a burst of at least one of lo's
// 64 KiB packets.
func TestTbfArgs(t *testing.T) {
	got := strings.Join(tbfArgs(125_000_000), " ")
	want := "tc qdisc add dev lo root tbf rate 1000000000bit burst 2000000 latency 100ms"
	if got != want {
		t.Fatalf("tbfArgs(125 MB/s) = %q, want %q", got, want)
	}
}
