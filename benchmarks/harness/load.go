package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	s3store "github.com/backupd/backupd/pkg/storage/s3"
)

// The checkpoint-load scenario's workloads run as processes of their own,
// as a user's would: the harness binary re-executed with workloadEnv set
// (under the rusage helper, which times them like every measured command).

// workloadEnv, when set to "cpu" or "io", makes the harness binary run
// that workload with its arguments and exit.
const workloadEnv = "BACKUPD_BENCH_WORKLOAD"

// workloadResult is what a workload prints on stdout, as JSON.
type workloadResult struct {
	Digest  string `json:"digest,omitempty"`   // cpu: the hashes' result, the same on every run
	Workers int    `json:"workers,omitempty"`  // cpu: goroutines
	WriteNS int64  `json:"write_ns,omitempty"` // io: writing and fsyncing the files
	ReadNS  int64  `json:"read_ns,omitempty"`  // io: reading them back
	Cached  bool   `json:"cached,omitempty"`   // io: the kernel had no way to drop the pages (tmpfs)
}

// workloadMain runs the workload kind with args and prints its result.
//
//	cpu BYTES: GOMAXPROCS goroutines hash BYTES in all with SHA-256, each
//	  over a 1 MiB buffer again and again, feeding every digest into the
//	  buffer so that no pass can be skipped;
//	io DIR BYTES FILESIZE: writes BYTES in files of FILESIZE into DIR (an
//	  existing, empty directory), fsyncing each, then drops their pages
//	  (posix_fadvise DONTNEED) and reads them back.
func workloadMain(kind string, args []string) int {
	var res workloadResult
	var err error
	switch {
	case kind == "cpu" && len(args) == 1:
		var n int64
		if n, err = strconv.ParseInt(args[0], 10, 64); err == nil {
			res, err = cpuWorkload(n, runtime.GOMAXPROCS(0))
		}
	case kind == "io" && len(args) == 3:
		var n, size int64
		n, err = strconv.ParseInt(args[1], 10, 64)
		if err == nil {
			size, err = strconv.ParseInt(args[2], 10, 64)
		}
		if err == nil {
			res, err = ioWorkload(args[0], n, size)
		}
	default:
		err = fmt.Errorf("bad workload %q %q", kind, args)
	}
	if err == nil {
		err = json.NewEncoder(os.Stdout).Encode(res)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "workload:", err)
		return 1
	}
	return 0
}

// cpuWorkload hashes n bytes in all on workers goroutines.
func cpuWorkload(n int64, workers int) (workloadResult, error) {
	const bufSize = 1 << 20
	digests := make([][32]byte, workers)
	var g errgroup.Group
	for w := range workers {
		g.Go(func() error {
			buf := make([]byte, bufSize)
			fillRandom(buf, rand.New(rand.NewPCG(genSeed, uint64(w))))
			var d [32]byte
			for done := int64(0); done < n/int64(workers); done += bufSize {
				copy(buf, d[:])
				d = sha256.Sum256(buf)
			}
			digests[w] = d
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return workloadResult{}, err
	}
	h := sha256.New()
	for _, d := range digests {
		h.Write(d[:])
	}
	return workloadResult{Digest: hex.EncodeToString(h.Sum(nil)), Workers: workers}, nil
}

// ioWorkload writes n bytes in files of size into dir, each fsynced, and
// reads them back after dropping their pages from the page cache.
func ioWorkload(dir string, n, size int64) (workloadResult, error) {
	var res workloadResult
	if size <= 0 || n <= 0 {
		return res, fmt.Errorf("io workload: bad sizes %d, %d", n, size)
	}
	buf := make([]byte, size)
	fillRandom(buf, rand.New(rand.NewPCG(genSeed^0x696f, 0))) // "io"
	var names []string
	start := time.Now()
	for done := int64(0); done < n; done += size {
		name := filepath.Join(dir, fmt.Sprintf("load-%04d.bin", len(names)))
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return res, err
		}
		_, err = f.Write(buf[:min(size, n-done)])
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return res, err
		}
		names = append(names, name)
	}
	res.WriteNS = time.Since(start).Nanoseconds()
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC {
		res.Cached = true // tmpfs pages are the files: nothing to drop, reads come from memory
	}
	start = time.Now()
	for _, name := range names {
		f, err := os.Open(name)
		if err != nil {
			return res, err
		}
		// The pages are clean (fsynced): DONTNEED drops them, so the read
		// goes to the device.
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			f.Close()
			return res, fmt.Errorf("posix_fadvise %s: %w", name, err)
		}
		_, err = io.ReadFull(f, buf[:cap(buf)])
		if err == io.ErrUnexpectedEOF {
			err = nil // the last file may be short
		}
		f.Close()
		if err != nil {
			return res, err
		}
	}
	res.ReadNS = time.Since(start).Nanoseconds()
	return res, nil
}

// procSample is what /proc says of a running process: CPU time (user +
// system, all threads) and bytes read through read-like system calls
// (rchar: page cache hits included).
type procSample struct {
	cpu   time.Duration
	rchar int64
}

// userHZ is the unit of the times in /proc/PID/stat (USER_HZ, 100 on
// every Linux architecture Go supports).
const userHZ = 100

// sampleProc reads /proc/PID/stat and /proc/PID/io.
func sampleProc(pid int) (procSample, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procSample{}, err
	}
	cpu, err := parseProcStatCPU(string(stat))
	if err != nil {
		return procSample{}, err
	}
	ioData, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return procSample{}, err
	}
	rchar, err := parseProcIO(string(ioData), "rchar")
	if err != nil {
		return procSample{}, err
	}
	return procSample{cpu: cpu, rchar: rchar}, nil
}

// parseProcStatCPU returns utime + stime of a /proc/PID/stat line. The
// command name (field 2) is in parentheses and may hold spaces and
// parentheses itself, so fields are counted from the last ')'.
func parseProcStatCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("bad /proc stat %q", stat)
	}
	f := strings.Fields(stat[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, fmt.Errorf("bad /proc stat %q", stat)
	}
	var ticks int64
	for _, s := range f[11:13] { // fields 14 and 15: utime, stime
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("bad /proc stat %q: %v", stat, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// parseProcIO returns the value of key in a /proc/PID/io text.
func parseProcIO(text, key string) (int64, error) {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc io %q", key, text)
}

// working is when a checkpoint counts as demonstrably working: this much
// CPU time and this many bytes read (the workspace's files; a fresh
// repository has nothing else to read).
type working struct {
	cpu   time.Duration
	rchar int64
}

func (w working) reached(s procSample) bool { return s.cpu >= w.cpu && s.rchar >= w.rchar }

// waitWorking polls the process pid every few milliseconds until it has
// done the work w says, and returns that sample; exited is closed when the
// process has exited (an error: it ended before it was seen working).
func waitWorking(pid int, w working, exited <-chan struct{}, timeout time.Duration) (procSample, error) {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var last procSample
	for {
		select {
		case <-exited:
			return last, fmt.Errorf("process %d exited before it was seen working (last: cpu %v, read %d bytes)", pid, last.cpu, last.rchar)
		case <-tick.C:
		}
		s, err := sampleProc(pid)
		if err == nil {
			last = s
			if w.reached(s) {
				return s, nil
			}
		}
		if time.Now().After(deadline) {
			return last, fmt.Errorf("process %d not working after %v (cpu %v, read %d bytes; want %v, %d)", pid, timeout, last.cpu, last.rchar, w.cpu, w.rchar)
		}
	}
}

// mountOf is the mount holding path, from a /proc/self/mountinfo text:
// the entry with the longest mount point that contains path.
func mountOf(mountinfo, path string) (fstype, source, point string, ok bool) {
	best := -1
	sc := bufio.NewScanner(strings.NewReader(mountinfo))
	for sc.Scan() {
		pre, post, found := strings.Cut(sc.Text(), " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !found || len(f) < 5 || len(g) < 2 {
			continue
		}
		mp := unescapeMount(f[4])
		if !(path == mp || mp == "/" || strings.HasPrefix(path, mp+"/")) || len(mp) <= best {
			continue
		}
		best, fstype, source, point, ok = len(mp), g[0], unescapeMount(g[1]), mp, true
	}
	return fstype, source, point, ok
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// describeFS says which filesystem holds path, e.g. "ext4 (/dev/vda on /)".
func describeFS(path string) string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err == nil {
		if fstype, source, point, ok := mountOf(string(data), path); ok {
			return fmt.Sprintf("%s (%s on %s)", fstype, source, point)
		}
	}
	return "unknown filesystem"
}

// repeatReader reads as an endless repetition of pattern.
type repeatReader struct{ pattern []byte }

func (r repeatReader) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		i := (off + int64(n)) % int64(len(r.pattern))
		n += copy(p[n:], r.pattern[i:])
	}
	return n, nil
}

// uploadPattern is what the upload baseline writes, repeated: 16 MiB of
// incompressible bytes (neither MinIO nor a local filesystem compresses
// or deduplicates, so a repetition costs what fresh bytes would).
func uploadPattern() []byte {
	buf := make([]byte, 16<<20)
	fillRandom(buf, rand.New(rand.NewPCG(genSeed^0x75706c64, 0))) // "upld"
	return buf
}

// writeFsync writes n bytes of pattern into a new file at path in 4 MiB
// writes, fsyncs and closes it, and returns the time that took.
func writeFsync(path string, n int64, pattern []byte) (time.Duration, error) {
	syscall.Sync() // no earlier step's writeback in the timing
	src := io.NewSectionReader(repeatReader{pattern}, 0, n)
	start := time.Now()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return 0, err
	}
	_, err = io.CopyBuffer(struct{ io.Writer }{f}, src, make([]byte, 4<<20))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return time.Since(start), err
}

// s3Upload uploads n bytes of pattern to bucket/key at endpoint as one
// parallel multipart upload with the part size and concurrency of
// backupd's s3 backend (pkg/storage/s3 defaults), and returns the time the
// upload took (not the client's setup); the object's size is checked and
// the object deleted afterwards, untimed.
func s3Upload(ctx context.Context, endpoint, user, password, bucket, key string, n int64, pattern []byte) (time.Duration, error) {
	client := awss3.New(awss3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(user, password, ""),
		// Ranged reads carry no checksum; saying so is noise.
		DisableLogOutputChecksumValidationSkipped: true,
	})
	up := manager.NewUploader(client, func(u *manager.Uploader) {
		u.PartSize = s3store.DefaultChunkSize
		u.Concurrency = s3store.DefaultUploadConcurrency
		u.LeavePartsOnError = false
	})
	syscall.Sync()
	start := time.Now()
	_, err := up.Upload(ctx, &awss3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String(key),
		// A ReaderAt and Seeker: the uploader reads parts in place, as
		// backupd's backend does with a pack.
		Body: io.NewSectionReader(repeatReader{pattern}, 0, n),
	})
	d := time.Since(start)
	if err != nil {
		return d, fmt.Errorf("uploading %d bytes to %s/%s: %w", n, bucket, key, err)
	}
	head, err := client.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		return d, fmt.Errorf("uploaded %s/%s: %w", bucket, key, err)
	}
	if got := aws.ToInt64(head.ContentLength); got != n {
		return d, fmt.Errorf("uploaded %s/%s: %d bytes stored, want %d", bucket, key, got, n)
	}
	if _, err := client.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}); err != nil {
		return d, fmt.Errorf("deleting %s/%s: %w", bucket, key, err)
	}
	return d, nil
}

// runtimeProcs is the GOMAXPROCS a workload process gets (the harness's
// own, inherited through the environment or not).
func runtimeProcs() int { return runtime.GOMAXPROCS(0) }
