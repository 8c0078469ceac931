package tlsreload

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"
)

// racyWindow is how long after its modification a file's stat is not
// trusted to show a further change: file system timestamps are coarse
// (a few milliseconds on Linux, up to two seconds elsewhere), so a file
// rewritten twice in that time, in place and with the same size, keeps
// its stat. Within it, content is compared as well (as git does with its
// "racily clean" index entries).
const racyWindow = 2 * time.Second

// maxAttempts bounds how often current reads files that keep changing
// while they are read before it reports the error.
const maxAttempts = 3

// fileState is what a file's stat says about its identity and version.
type fileState struct {
	exists   bool
	dev, ino uint64
	size     int64
	mtime    int64 // nanoseconds since the epoch
}

func statAll(paths []string) []fileState {
	states := make([]fileState, len(paths))
	for i, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			continue
		}
		dev, ino := fileID(fi)
		states[i] = fileState{exists: true, dev: dev, ino: ino, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	}
	return states
}

// racy reports whether any of the files was modified within racyWindow
// before now (or in the future).
func racy(states []fileState, now time.Time) bool {
	limit := now.Add(-racyWindow).UnixNano()
	return slices.ContainsFunc(states, func(s fileState) bool { return s.exists && s.mtime > limit })
}

// readAll reads the files; on error it returns nil contents.
func readAll(paths []string) ([][]byte, error) {
	contents := make([][]byte, len(paths))
	for i, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("tlsreload: %w", err)
		}
		contents[i] = data
	}
	return contents, nil
}

// watched is a value parsed from files, parsed again when they change.
type watched[T any] struct {
	paths   []string
	parse   func(contents [][]byte) (T, error)
	onError func(error)

	mu sync.Mutex
	// states, contents and racy are those of the last attempt to load,
	// successful or not; contents is nil if the files could not be read.
	states   []fileState
	contents [][]byte
	racy     bool
	// value is the last good value; err is the last attempt's error.
	value T
	err   error
}

// watch loads a value from the files at paths with parse. Later changes
// are loaded by current, which reports their errors to onError.
func watch[T any](paths []string, parse func([][]byte) (T, error), onError func(error)) (*watched[T], error) {
	now := time.Now()
	states := statAll(paths)
	contents, err := readAll(paths)
	if err != nil {
		return nil, err
	}
	value, err := parse(contents)
	if err != nil {
		return nil, err
	}
	return &watched[T]{
		paths: paths, parse: parse, onError: onError,
		states: states, contents: contents, racy: racy(states, now),
		value: value,
	}, nil
}

// current returns the value loaded from the files as they are now, or, if
// they have changed and do not load, the last good value and the error
// (which it reports to onError once per change).
func (w *watched[T]) current() (T, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for attempt := 1; ; attempt++ {
		now := time.Now()
		states := statAll(w.paths)
		sameStat := slices.Equal(states, w.states)
		if sameStat && !w.racy {
			return w.value, w.err
		}
		contents, err := readAll(w.paths)
		if equalContents(contents, w.contents) && (contents != nil || err.Error() == w.err.Error()) {
			// Touched, or swapped for the same bytes: nothing to load,
			// nor to report unless a retry found the same error.
			w.states, w.racy = states, racy(states, now)
			if attempt > 1 && w.err != nil {
				w.onError(w.err)
			}
			return w.value, w.err
		}
		w.states, w.contents, w.racy = states, contents, racy(states, now)
		if err == nil {
			var v T
			if v, err = w.parse(contents); err == nil {
				w.value, w.err = v, nil
				return v, nil
			}
		}
		w.err = err
		// A certificate may have been read before its new key was
		// written, or across a swap of ..data: if the files changed
		// while being read, look again before reporting.
		if attempt < maxAttempts && !slices.Equal(statAll(w.paths), states) {
			continue
		}
		w.onError(err)
		return w.value, err
	}
}

// equalContents reports whether a and b hold the same files' bytes; two
// failed reads (nil) are equal.
func equalContents(a, b [][]byte) bool {
	return slices.EqualFunc(a, b, bytes.Equal) && (a == nil) == (b == nil)
}

// parseKeyPair returns a parser of the contents of a certificate file and
// its key file.
func parseKeyPair(certPath, keyPath string) func([][]byte) (*tls.Certificate, error) {
	return func(contents [][]byte) (*tls.Certificate, error) {
		cert, err := tls.X509KeyPair(contents[0], contents[1])
		if err != nil {
			return nil, fmt.Errorf("tlsreload: certificate %s with key %s: %w", certPath, keyPath, err)
		}
		if cert.Leaf == nil {
			if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
				return nil, fmt.Errorf("tlsreload: certificate %s: %w", certPath, err)
			}
		}
		return &cert, nil
	}
}

// parseCABundle returns a parser of the contents of a CA bundle. Unlike
// x509.CertPool.AppendCertsFromPEM it fails on a certificate that does
// not parse or a truncated PEM block (a half-written file) rather than
// leaving it out.
func parseCABundle(path string) func([][]byte) (*x509.CertPool, error) {
	return func(contents [][]byte) (*x509.CertPool, error) {
		pool := x509.NewCertPool()
		n := 0
		rest := contents[0]
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			if block.Type != "CERTIFICATE" {
				continue
			}
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("tlsreload: CA bundle %s: certificate %d: %w", path, n+1, err)
			}
			pool.AddCert(cert)
			n++
		}
		if bytes.Contains(rest, []byte("-----BEGIN")) {
			return nil, fmt.Errorf("tlsreload: CA bundle %s: malformed or truncated PEM block after %d certificates", path, n)
		}
		if n == 0 {
			return nil, fmt.Errorf("tlsreload: CA bundle %s: no PEM certificate found", path)
		}
		return pool, nil
	}
}
