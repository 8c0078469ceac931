package main

import (
	"net/http/httptest"
	"testing"
)

func TestClassifyRequest(t *testing.T) {
	for _, c := range []struct {
		method, target string
		want           requestKind
	}{
		{"GET", "/bench-1/backupd/bench/data/ab/abcd", requestKind{"GET", "data"}},
		{"PUT", "/bench-1/restic/index/0123", requestKind{"PUT", "index"}},
		{"DELETE", "/bench-1/backupd/bench/snapshots/ws/0001-ff", requestKind{"DELETE", "snapshots"}},
		{"GET", "/bench-1/?list-type=2&prefix=restic%2Fdata%2F", requestKind{"LIST", "data"}},
		{"GET", "/bench-1?list-type=2&prefix=backupd%2Fbench%2Fsessions%2F", requestKind{"LIST", "other"}},
		{"GET", "/bench-1/?location=", requestKind{"GET", "other"}},
		{"HEAD", "/bench-1/restic/config", requestKind{"HEAD", "other"}},
		{"PUT", "/bench-1/backupd/bench/prune/state", requestKind{"PUT", "other"}},
	} {
		if got := classifyRequest(httptest.NewRequest(c.method, c.target, nil)); got != c.want {
			t.Errorf("%s %s: %v, want %v", c.method, c.target, got, c.want)
		}
	}
}
