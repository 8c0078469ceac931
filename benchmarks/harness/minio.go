package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// minioServer is a MinIO started by the harness on loopback (--minio), from
// the binaries `make test-servers` installs.
type minioServer struct {
	url, user, password string
	dataDir, mcConfig   string
	mc                  string
	addr, consoleAddr   string
	cmd                 *exec.Cmd
	buckets             int
}

func testServersDir() string {
	if d := os.Getenv("BACKUPD_TEST_SERVERS"); d != "" {
		return d
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	return filepath.Join(cache, "backupd", "test-servers")
}

func startMinIO(work string) (*minioServer, error) {
	bin := filepath.Join(testServersDir(), "bin")
	s := &minioServer{user: "benchroot", password: "benchroot-secret", dataDir: filepath.Join(work, "minio-data"),
		mcConfig: filepath.Join(work, "mc-config"), mc: filepath.Join(bin, "mc")}
	for _, b := range []string{filepath.Join(bin, "minio"), s.mc} {
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("%s missing: run `make test-servers` first", b)
		}
	}
	ports := make([]int, 2)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	s.addr = "127.0.0.1:" + strconv.Itoa(ports[0])
	s.consoleAddr = "127.0.0.1:" + strconv.Itoa(ports[1])
	s.url = "http://" + s.addr
	if err := s.start(); err != nil {
		return nil, err
	}
	if out, err := s.mcRun("alias", "set", "bench", s.url, s.user, s.password); err != nil {
		s.stop()
		return nil, fmt.Errorf("mc alias set: %v: %s", err, out)
	}
	return s, nil
}

// start starts the server process on s.addr and waits until it is ready.
func (s *minioServer) start() error {
	s.cmd = exec.Command(filepath.Join(testServersDir(), "bin", "minio"), "server", s.dataDir, "--quiet", "--address", s.addr, "--console-address", s.consoleAddr)
	s.cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+s.user, "MINIO_ROOT_PASSWORD="+s.password, "MINIO_BROWSER=off", "MINIO_CI_CD=1")
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(s.url + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			s.stop()
			return fmt.Errorf("minio did not become ready at %s", s.url)
		}
		time.Sleep(50 * time.Millisecond) // readiness poll
	}
}

// restart replaces the server with a fresh one, empty, at the same
// address (--fresh-minio): its buckets and its process's state go.
func (s *minioServer) restart() error {
	s.stop()
	if err := os.RemoveAll(s.dataDir); err != nil {
		return err
	}
	return s.start()
}

func (s *minioServer) mcRun(args ...string) ([]byte, error) {
	cmd := exec.Command(s.mc, args...)
	cmd.Env = append(os.Environ(), "MC_CONFIG_DIR="+s.mcConfig)
	return cmd.CombinedOutput()
}

// newBucket creates a fresh bucket and returns its name.
func (s *minioServer) newBucket() (string, error) {
	s.buckets++
	name := fmt.Sprintf("bench-%d", s.buckets)
	if out, err := s.mcRun("mb", "bench/"+name); err != nil {
		return "", fmt.Errorf("mc mb: %v: %s", err, out)
	}
	return name, nil
}

// env holds the credentials both tools read (AWS default chain, restic's
// s3 backend).
func (s *minioServer) env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s.user, "AWS_SECRET_ACCESS_KEY=" + s.password, "AWS_REGION=us-east-1"}
}

func (s *minioServer) stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
	}
}

// cpu is the CPU time (user and system) the server has used so far, from
// /proc/PID/stat (in clock ticks of 1/100 s, which Linux fixes for /proc).
func (s *minioServer) cpu() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces; fields 14 and 15
	// (utime, stime) count from the state after it, field 3.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("minio: unexpected /proc stat %q", b)
	}
	var ticks int64
	for _, x := range f[11:13] {
		n, err := strconv.ParseInt(x, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("minio: /proc stat field %q: %v", x, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// selfCPU is the CPU time (user and system) this process has used so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
