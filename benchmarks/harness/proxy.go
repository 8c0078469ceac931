package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"

	"golang.org/x/time/rate"
)

// countingProxy is an HTTP reverse proxy in front of the MinIO server that
// counts the requests passing through it, by method and by the kind of
// object they address, so that both tools' storage requests are counted
// the same way, whatever each tool says of itself. It forwards every
// request unchanged, Host header included (S3 signatures cover the host the
// client signed for, which is the proxy's address), and streams bodies.
type countingProxy struct {
	url  string
	srv  *http.Server
	mu   sync.Mutex
	reqs map[requestKind]int64
}

// requestKind is what the proxy counts a request under.
type requestKind struct {
	method string // GET, PUT, HEAD, DELETE, POST, or LIST (a GET listing a bucket)
	kind   string // data, index, snapshots or other
}

// startCountingProxy starts the proxy; with limit > 0 it passes at most
// limit bytes per second each way (request bodies up, response bodies
// down), all connections together: a link of that speed, without its
// latency.
func startCountingProxy(target string, limit int64) (*countingProxy, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &countingProxy{url: "http://" + l.Addr().String(), reqs: map[requestKind]int64{}}
	rp := &httputil.ReverseProxy{
		// Rewrite keeps the inbound Host header (Out.Host stays as the
		// client sent it) and adds no X-Forwarded-* headers.
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = r.In.Host
		},
	}
	var up, down *rate.Limiter
	if limit > 0 {
		up, down = rate.NewLimiter(rate.Limit(limit), linkBurst), rate.NewLimiter(rate.Limit(limit), linkBurst)
		rp.FlushInterval = -1 // every write goes out as the link lets it
	}
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k := classifyRequest(r)
		p.mu.Lock()
		p.reqs[k]++
		p.mu.Unlock()
		// The transport reads the request body to its end (EOF) after the
		// bytes its length says, which can come after MinIO has answered.
		// Without full duplex, the server would then, at the response's
		// first write, read the body's rest and close it under that read,
		// and the transport, on its read of a closed body, drops the
		// connection with the response half passed on.
		if err := http.NewResponseController(w).EnableFullDuplex(); err != nil {
			http.Error(w, "proxy: "+err.Error(), http.StatusInternalServerError)
			return
		}
		if limit > 0 {
			if r.Body != nil {
				r.Body = &linkReader{r.Body, up, r.Context()}
			}
			w = &linkWriter{w, down, r.Context()}
		}
		rp.ServeHTTP(w, r)
	})}
	go p.srv.Serve(l) //nolint:errcheck // ends with close
	return p, nil
}

// classifyRequest names the method and object kind of an S3 request. The
// kind is taken from the key (path-style: /bucket/key; virtual-host style:
// /key), or for a listing from its prefix parameter: a key or prefix with a
// path segment data, index or snapshots is of that kind (backupd:
// backupd/<owner>/data/..., restic: restic/data/...); anything else (config,
// keys, locks, sessions, prune state) is other.
func classifyRequest(r *http.Request) requestKind {
	q := r.URL.Query()
	method := r.Method
	key := strings.TrimPrefix(r.URL.Path, "/")
	_, rest, hasKey := strings.Cut(key, "/")
	if method == http.MethodGet && (!hasKey || rest == "") && (q.Has("list-type") || q.Has("prefix") || q.Has("delimiter") || len(q) == 0) {
		method = "LIST"
	}
	if !hasKey || rest == "" {
		key = q.Get("prefix")
	}
	kind := "other"
	for _, seg := range strings.Split(key, "/") {
		if seg == "data" || seg == "index" || seg == "snapshots" {
			kind = seg
			break
		}
	}
	return requestKind{method: method, kind: kind}
}

// reset sets every count to zero.
func (p *countingProxy) reset() {
	p.mu.Lock()
	clear(p.reqs)
	p.mu.Unlock()
}

// counts returns a copy of the counts since the last reset.
func (p *countingProxy) counts() map[requestKind]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.reqs)
}

func (p *countingProxy) close() {
	p.srv.Close()
}

// requestTotal sums counts, optionally only those of one kind.
func requestTotal(c map[requestKind]int64, kind string) int64 {
	var n int64
	for k, v := range c {
		if kind == "" || k.kind == kind {
			n += v
		}
	}
	return n
}

// formatRequests lists counts as "GET data 12, LIST index 1, ...", sorted.
func formatRequests(c map[requestKind]int64) string {
	keys := slices.SortedFunc(maps.Keys(c), func(a, b requestKind) int {
		if a.kind != b.kind {
			return strings.Compare(a.kind, b.kind)
		}
		return strings.Compare(a.method, b.method)
	})
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %s %d", k.method, k.kind, c[k]))
	}
	return strings.Join(parts, ", ")
}

// linkBurst is the most bytes the link passes at once.
const linkBurst = 64 << 10

// linkReader passes a request body at the link's speed.
type linkReader struct {
	r   io.ReadCloser
	l   *rate.Limiter
	ctx context.Context
}

func (lr *linkReader) Read(p []byte) (int, error) {
	n, err := lr.r.Read(p[:min(len(p), linkBurst)])
	if n > 0 {
		if werr := lr.l.WaitN(lr.ctx, n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}

func (lr *linkReader) Close() error { return lr.r.Close() }

// linkWriter passes a response body at the link's speed.
type linkWriter struct {
	http.ResponseWriter
	l   *rate.Limiter
	ctx context.Context
}

func (lw *linkWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), linkBurst)
		if err := lw.l.WaitN(lw.ctx, n); err != nil {
			return written, err
		}
		m, err := lw.ResponseWriter.Write(p[:n])
		written += m
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// Flush lets the reverse proxy flush through the wrapper.
func (lw *linkWriter) Flush() {
	if f, ok := lw.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
