package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
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

// TestProxyLink: with a limit, the proxy passes bodies both ways intact
// and no faster than the limit (less the burst); without one it adds no
// wait.
func TestProxyLink(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, err := io.ReadAll(r.Body)
		if err != nil || !bytes.Equal(got, body) {
			http.Error(w, "request body differs", http.StatusBadRequest)
			return
		}
		w.Write(body)
	}))
	defer backend.Close()
	for _, limit := range []int64{0, 4 << 20} {
		p, err := startCountingProxy(backend.URL, limit)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		resp, err := http.Post(p.url+"/bucket/key", "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		d := time.Since(start)
		p.close()
		if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(got, body) {
			t.Fatalf("limit %d: status %d, %d bytes back, %v", limit, resp.StatusCode, len(got), err)
		}
		// 1 MiB up and 1 MiB down at 4 MiB/s each, one after the other,
		// less a burst each way: at least 0.45 s.
		if limit > 0 && d < 450*time.Millisecond {
			t.Errorf("limit %d B/s: 1 MiB each way in %v", limit, d)
		}
		t.Logf("limit %d B/s: %v", limit, d)
	}
}
