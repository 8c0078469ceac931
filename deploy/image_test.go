package deploy

import (
	"bufio"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/backupd/backupd/deploy/internal/image"
)

// What `make image` wrote reads back with go-containerregistry: an OCI
// image whose entrypoint is the daemon, root, with the OCI labels; its
// layer holds static binaries, built as deploy/image/build-binaries.sh
// builds them, that report the version; the docker tarball holds the
// same image.
func TestImage(t *testing.T) {
	img := builtImage(t)
	if mt, err := img.MediaType(); err != nil || mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %v %v", mt, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if !slices.Equal(c.Entrypoint, []string{"/usr/local/bin/backupd"}) || len(c.Cmd) != 0 || c.User != "0:0" || cf.OS != "linux" || cf.Architecture == "" {
		t.Errorf("config: entrypoint %q cmd %q user %q platform %s/%s", c.Entrypoint, c.Cmd, c.User, cf.OS, cf.Architecture)
	}
	if c.Labels["org.opencontainers.image.version"] != testVersion || c.Labels["org.opencontainers.image.source"] != image.Source ||
		len(c.Labels["org.opencontainers.image.revision"]) != 40 || c.Labels["org.opencontainers.image.created"] != "2023-11-14T22:13:20Z" {
		t.Errorf("labels %v", c.Labels)
	}
	if !cf.Created.Time.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("created %v: not SOURCE_DATE_EPOCH", cf.Created)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers (%v): want one on the empty base", len(layers), err)
	}

	// The layer: exactly these files, the binaries static and
	// executable.
	var files []string
	filepath.Walk(built.rootfs, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			files = append(files, strings.TrimPrefix(p, built.rootfs))
		}
		return err
	})
	want := []string{image.CABundle, "/usr/local/bin/backupctl", "/usr/local/bin/backupd"}
	if !slices.Equal(files, want) {
		t.Fatalf("files in the layer %v, want %v", files, want)
	}
	if fi, err := os.Stat(filepath.Join(built.rootfs, "tmp")); err != nil || !fi.IsDir() {
		t.Errorf("no /tmp: %v", err)
	}
	for _, b := range image.Binaries {
		p := filepath.Join(built.rootfs, image.BinDir, b)
		checkStatic(t, p)
		bi, err := buildinfo.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		settings := map[string]string{}
		for _, s := range bi.Settings {
			settings[s.Key] = s.Value
		}
		// The flags of deploy/image/build-binaries.sh (Go leaves -ldflags
		// out of the build info with -trimpath: --version shows -X, the
		// missing symbol table -s).
		if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" ||
			settings["GOOS"] != "linux" || settings["vcs.revision"] != "" || bi.Path != "github.com/backupd/backupd/cmd/"+b {
			t.Errorf("%s built as %s with %v", b, bi.Path, settings)
		}
		if f, err := elf.Open(p); err != nil || f.Section(".symtab") != nil {
			t.Errorf("%s: a symbol table (built without -s?) %v", b, err)
		} else {
			f.Close()
		}
		out, err := exec.Command(p, "--version").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != b+" version "+testVersion {
			t.Errorf("%s --version: %v %q", b, err, out)
		}
	}

	// The tarball for docker load holds the same config and layer.
	tb, err := tarball.ImageFromPath(filepath.Join(built.dir, "backupd-image.tar"), nil)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := img.ConfigName()
	b, err := tb.ConfigName()
	if err != nil || a != b {
		t.Errorf("tarball config %v, layout's %v (%v)", b, a, err)
	}
	tl, err := tb.Layers()
	if err != nil || len(tl) != 1 {
		t.Fatalf("tarball layers %d %v", len(tl), err)
	}
	d1, _ := layers[0].DiffID()
	d2, _ := tl[0].DiffID()
	if d1 != d2 {
		t.Errorf("tarball layer %v, layout's %v", d2, d1)
	}
}

// checkStatic fails t unless p is an ELF executable with neither a
// dynamic section nor an interpreter: it runs on the empty base.
func checkStatic(t *testing.T, p string) {
	t.Helper()
	f, err := elf.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC {
		t.Errorf("%s: ELF type %v, want a static executable", p, f.Type)
	}
	if s := f.Section(".dynamic"); s != nil {
		t.Errorf("%s has a dynamic section", p)
	}
	if s := f.Section(".interp"); s != nil {
		t.Errorf("%s has an interpreter", p)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_DYNAMIC || prog.Type == elf.PT_INTERP {
			t.Errorf("%s: program header %v", p, prog.Type)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) != 0 {
		t.Errorf("%s imports %v (%v)", p, libs, err)
	}
}

// The same image builds the same: the digest depends on the binaries and
// the source time only.
func TestImageReproducible(t *testing.T) {
	img := builtImage(t)
	cf, _ := img.ConfigFile()
	again, err := image.Build(image.Options{BinariesDir: filepath.Join(built.dir, "rootfs"), Version: testVersion,
		Revision: cf.Config.Labels["org.opencontainers.image.revision"], Created: time.Unix(1700000000, 0), Arch: cf.Architecture})
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, err := again.Digest()
	if err != nil || d1 != d2 {
		t.Errorf("digests %v, %v (%v)", d1, d2, err)
	}
}

// deploy/Dockerfile builds what `make image` builds: the Go of go.mod,
// the binaries from the same script (so with the same flags) into the
// same paths, on an empty base, with the same entrypoint, user, PATH and
// labels; and the Makefile's image target runs the same script.
func TestDockerfileMatchesImage(t *testing.T) {
	img := builtImage(t)
	cf, _ := img.ConfigFile()
	stages := parseDockerfile(t, "Dockerfile")
	if len(stages) != 2 || stages[0].from != "golang:${GO_VERSION} AS build" || stages[1].from != "scratch" {
		t.Fatalf("stages %+v: want a golang build stage and a scratch one", stages)
	}
	goMod := string(mustRead(t, "../go.mod"))
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(goMod)
	if goVersion == nil || !slices.Contains(stages[0].global, "ARG GO_VERSION="+goVersion[1]) {
		t.Errorf("Dockerfile's GO_VERSION is not go.mod's go %v", goVersion)
	}
	if !slices.ContainsFunc(stages[0].lines, func(l string) bool {
		return strings.HasPrefix(l, "RUN VERSION=${VERSION} sh deploy/image/build-binaries.sh /out/usr/local/bin")
	}) {
		t.Error("the build stage does not run deploy/image/build-binaries.sh")
	}
	mk := string(mustRead(t, "../Makefile"))
	if !regexp.MustCompile(`(?m)^image:\n\tVERSION=\$\(VERSION\) sh deploy/image/build-binaries.sh `).MatchString(mk) {
		t.Error("make image does not run deploy/image/build-binaries.sh")
	}
	var copied []string
	final := map[string]string{}
	for _, l := range stages[1].lines {
		f := strings.Fields(l)
		switch f[0] {
		case "COPY":
			if f[1] != "--from=build" {
				t.Errorf("%s: not from the build stage", l)
			}
			src, dst := f[len(f)-2], f[len(f)-1]
			if src != dst && src != "/out"+dst {
				t.Errorf("%s: copies %s to another path", l, src)
			}
			if dst != "/tmp" {
				copied = append(copied, dst)
			}
		case "ENTRYPOINT":
			var ep []string
			if err := json.Unmarshal([]byte(strings.TrimPrefix(l, "ENTRYPOINT ")), &ep); err != nil || !slices.Equal(ep, cf.Config.Entrypoint) {
				t.Errorf("%s: image entrypoint %q (exec form needed: no shell)", l, cf.Config.Entrypoint)
			}
		case "USER", "WORKDIR":
			final[f[0]] = f[1]
		case "ENV":
			final["ENV"] = strings.TrimPrefix(l, "ENV ")
		case "LABEL":
			final["LABEL"] = strings.TrimPrefix(l, "LABEL ")
		}
	}
	slices.Sort(copied)
	if want := []string{image.CABundle, "/usr/local/bin/backupctl", "/usr/local/bin/backupd"}; !slices.Equal(copied, want) {
		t.Errorf("Dockerfile copies %v, the image holds %v", copied, want)
	}
	if final["USER"] != cf.Config.User || final["WORKDIR"] != cf.Config.WorkingDir || !slices.Equal([]string{final["ENV"]}, cf.Config.Env) {
		t.Errorf("Dockerfile %v, image user %q workdir %q env %q", final, cf.Config.User, cf.Config.WorkingDir, cf.Config.Env)
	}
	labels := map[string]string{}
	for _, m := range regexp.MustCompile(`(\S+)="([^"]*)"`).FindAllStringSubmatch(final["LABEL"], -1) {
		labels[m[1]] = m[2]
	}
	for k, v := range cf.Config.Labels {
		got, ok := labels[k]
		if !ok {
			t.Errorf("Dockerfile lacks label %s", k)
		} else if !strings.HasPrefix(got, "${") && got != v {
			t.Errorf("label %s: Dockerfile %q, image %q", k, got, v)
		}
	}
	if len(labels) != len(cf.Config.Labels) {
		t.Errorf("Dockerfile labels %v, image's %v", labels, cf.Config.Labels)
	}
}

// stage is a Dockerfile stage: its FROM, then its instructions, with
// continuation lines joined; global holds what precedes the first FROM.
type stage struct {
	from   string
	lines  []string
	global []string
}

func parseDockerfile(t *testing.T, p string) []stage {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stages []stage
	var global []string
	sc := bufio.NewScanner(f)
	cur := ""
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasSuffix(l, "\\") {
			cur += strings.TrimSuffix(l, "\\") + " "
			continue
		}
		l, cur = strings.Join(strings.Fields(cur+l), " "), ""
		switch {
		case strings.HasPrefix(l, "FROM "):
			stages = append(stages, stage{from: strings.TrimPrefix(l, "FROM "), global: global})
		case len(stages) == 0:
			global = append(global, l)
		default:
			stages[len(stages)-1].lines = append(stages[len(stages)-1].lines, l)
		}
	}
	return stages
}
