// Package image builds backupd's container image without a container
// engine, with go-containerregistry: an empty base and one layer holding
// the static binaries (deploy/image/build-binaries.sh) and a CA bundle,
// written as an OCI image layout (for `crane push DIR`) and as a tarball
// that `docker load` and `crane push FILE` read.
package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// What the image holds, where; deploy/Dockerfile copies the same files to
// the same places (a test compares them).
const (
	BinDir     = "/usr/local/bin"
	Entrypoint = BinDir + "/backupd"
	CABundle   = "/etc/ssl/certs/ca-certificates.crt"
	// User is root: restores give files their owners. The chart drops
	// every capability but those restores need (docs/OPERATIONS.md).
	User = "0:0"
	// Source is the repository the labels name.
	Source = "https://github.com/backupd/backupd"
)

// Binaries are the programs of the image, in BinDir.
var Binaries = []string{"backupd", "backupctl"}

// Options say what to build.
type Options struct {
	// BinariesDir holds the static binaries named by Binaries.
	BinariesDir string
	// CABundle is the PEM file of trusted CAs copied to CABundle (the
	// object stores are reached over HTTPS); the build host's by default.
	CABundle string
	// Version and Revision are recorded in the labels.
	Version, Revision string
	// Created is the image's creation time and every file's mtime (fixed,
	// so that the same binaries give the same image digest).
	Created time.Time
	// Arch is the binaries' GOARCH.
	Arch string
}

// Labels are the OCI labels of the image.
func Labels(o Options) map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       "backupd",
		"org.opencontainers.image.description": "backupd node daemon and backupctl: workspace backup and restore to object storage",
		"org.opencontainers.image.version":     o.Version,
		"org.opencontainers.image.revision":    o.Revision,
		"org.opencontainers.image.source":      Source,
		"org.opencontainers.image.created":     o.Created.UTC().Format(time.RFC3339),
	}
}

// Build builds the image.
func Build(o Options) (v1.Image, error) {
	if o.Version == "" {
		return nil, errors.New("image: no version")
	}
	if o.CABundle == "" {
		o.CABundle = CABundle
	}
	if o.Arch == "" {
		return nil, errors.New("image: no architecture")
	}
	files := map[string]file{}
	for _, b := range Binaries {
		data, err := os.ReadFile(path.Join(o.BinariesDir, b))
		if err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
		files[path.Join(BinDir, b)[1:]] = file{data, 0o755}
	}
	ca, err := os.ReadFile(o.CABundle)
	if err != nil {
		return nil, fmt.Errorf("image: CA bundle (Debian: apt-get install ca-certificates): %w", err)
	}
	files[CABundle[1:]] = file{ca, 0o644}
	layerTar, err := layerTar(files, o.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerTar)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("image: layer: %w", err)
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	created := v1.Time{Time: o.Created.UTC()}
	img, err := mutate.Append(base, mutate.Addendum{Layer: layer, MediaType: types.OCILayer,
		History: v1.History{Created: created, CreatedBy: "make image: deploy/image/build-binaries.sh, CA bundle", Comment: "backupd " + o.Version}})
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = o.Arch, "linux"
	cf.Created = created
	cf.Config.Entrypoint = []string{Entrypoint}
	cf.Config.Cmd = nil
	cf.Config.User = User
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{"PATH=" + BinDir}
	cf.Config.Labels = Labels(o)
	return mutate.ConfigFile(img, cf)
}

type file struct {
	data []byte
	mode int64
}

// layerTar is the layer: the files, with root ownership, fixed times and
// every parent directory (and /tmp, sticky, for tools run without the
// chart's scratch volume).
func layerTar(files map[string]file, mtime time.Time) ([]byte, error) {
	dirs := map[string]bool{"tmp": true}
	for p := range files {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := func(h *tar.Header) error {
		h.Uid, h.Gid, h.Uname, h.Gname, h.ModTime, h.Format = 0, 0, "root", "root", mtime, tar.FormatPAX
		return tw.WriteHeader(h)
	}
	for _, d := range sortedKeys(dirs) {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := hdr(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode}); err != nil {
			return nil, err
		}
	}
	for _, p := range sortedKeys(files) {
		f := files[p]
		if err := hdr(&tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: f.mode, Size: int64(len(f.data))}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// WriteLayout writes img as the only image of a new OCI image layout in
// dir (replacing one there), named ref.
func WriteLayout(dir string, img v1.Image, ref name.Reference) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("image: layout %s: %w", dir, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	return p.AppendImage(img,
		layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref.Identifier()}),
		layout.WithPlatform(v1.Platform{OS: cf.OS, Architecture: cf.Architecture}))
}

// WriteTarball writes img, tagged ref, as a tarball for `docker load`.
func WriteTarball(file string, img v1.Image, ref name.Tag) error {
	return tarball.WriteToFile(file, ref, img)
}
