package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The example config in deploy/ parses and validates.
func TestDeployExampleConfig(t *testing.T) {
	var c Config
	if err := c.LoadFile(filepath.Join("..", "..", "deploy", "backupd.yaml")); err != nil {
		t.Fatal(err)
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.TLS.ClientCA == "" || c.Limits.Backups != 2 || c.Storage.URL == "" || len(c.WorkspaceRoots) != 1 ||
		c.Retention.KeepLast != 10 || c.Retention.KeepWithin.String() != "7d" || len(c.Retention.KeepTags) != 1 ||
		c.Maintenance.Interval != 6*time.Hour || c.Maintenance.Jitter != 30*time.Minute || c.Maintenance.MaxUnused != 10 || c.Limits.Maintenance != 2 ||
		c.Limits.IndexMemory != 64<<20 || c.Checkpoint != (Checkpoint{Concurrency: 1, Keep: 2, DiskWait: time.Second}) {
		t.Fatalf("example config read as %+v", c)
	}
}

func TestConfigErrorsNameTheSetting(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	os.WriteFile(p, []byte("limits:\n  backups: -1\n  queue_timeout: 0s\n  index_memory: -2\nmaintenance:\n  interval: 1h\n  jitter: 2h\n  max_unused: 101\nlog:\n  format: xml\nworkspace_roots: [relative]\nlisten: \"nonsense\"\n"), 0o644)
	var c Config
	if err := c.LoadFile(p); err != nil {
		t.Fatal(err)
	}
	c.SetDefaults()
	err := c.Validate()
	for _, want := range []string{"limits: backups", "limits.index_memory", "maintenance: interval", "maintenance.max_unused", "log.format", "workspace_roots", "listen"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}

// Checkpoint settings: defaults, and errors naming them.
func TestCheckpointConfig(t *testing.T) {
	c := Config{WorkspaceRoots: []string{"/w"}}
	c.SetDefaults()
	if c.Checkpoint != (Checkpoint{Concurrency: DefaultCheckpoints, Keep: DefaultCheckpointKeep, DiskWait: DefaultCheckpointDiskWait}) {
		t.Fatalf("checkpoint defaults %+v", c.Checkpoint)
	}
	p := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(p, []byte("workspace_roots: [/w]\ncheckpoint:\n  concurrency: -1\n  bandwidth: -5\n  keep: 3\n"), 0o644)
	c = Config{}
	if err := c.LoadFile(p); err != nil {
		t.Fatal(err)
	}
	c.SetDefaults()
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "checkpoint: concurrency (-1)") || !strings.Contains(err.Error(), "bandwidth (-5)") {
		t.Fatalf("invalid checkpoint settings: %v", err)
	}
	for _, w := range []struct {
		yaml string
		want time.Duration // -2: refused
	}{{"-1s", -time.Second}, {"250ms", 250 * time.Millisecond}, {"1m", time.Minute}, {"2m", -2}} {
		os.WriteFile(p, []byte("workspace_roots: [/w]\ncheckpoint:\n  disk_wait: "+w.yaml+"\n"), 0o644)
		c = Config{}
		if err := c.LoadFile(p); err != nil {
			t.Fatal(err)
		}
		c.SetDefaults()
		err := c.Validate()
		switch {
		case w.want == -2 && (err == nil || !strings.Contains(err.Error(), "checkpoint.disk_wait")):
			t.Errorf("disk_wait %s: %v, want an error naming checkpoint.disk_wait", w.yaml, err)
		case w.want != -2 && (err != nil || c.Checkpoint.DiskWait != w.want):
			t.Errorf("disk_wait %s: %v, %v", w.yaml, c.Checkpoint.DiskWait, err)
		}
	}
	os.WriteFile(p, []byte("workspace_roots: [/w]\ncheckpoint:\n  keeps: 3\n"), 0o644)
	if err := (&Config{}).LoadFile(p); err == nil || !strings.Contains(err.Error(), "keeps") {
		t.Fatalf("an unknown checkpoint key: %v", err)
	}
}
