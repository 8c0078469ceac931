package deploy

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/backupd/backupd/internal/testservers"
)

// testVersion is the version the tests build the image as.
const testVersion = "0.0.0-deploytest"

// built is what `make image` wrote, once for all tests: the image
// directory and the files of the image's layer, extracted.
var built struct {
	dir     string // IMAGE_DIR: oci/, backupd-image.tar, rootfs/
	rootfs  string // the layer's files, as read back from the OCI layout
	img     v1.Image
	err     error
	makeOut []byte
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "backupd-deploy-")
	if err != nil {
		panic(err)
	}
	buildImage(dir)
	code := testservers.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildImage runs `make image` as a user would, then reads the image back
// from its OCI layout and extracts its layer.
func buildImage(dir string) {
	built.dir = filepath.Join(dir, "image")
	cmd := exec.Command("make", "--no-print-directory", "-C", "..", "image", "IMAGE_DIR="+built.dir, "VERSION="+testVersion, "SOURCE_DATE_EPOCH=1700000000")
	built.makeOut, built.err = cmd.CombinedOutput()
	if built.err != nil {
		built.err = fmt.Errorf("make image: %w\n%s", built.err, built.makeOut)
		return
	}
	idx, err := layout.ImageIndexFromPath(filepath.Join(built.dir, "oci"))
	if err != nil {
		built.err = err
		return
	}
	im, err := idx.IndexManifest()
	if err != nil {
		built.err = err
		return
	}
	if len(im.Manifests) != 1 {
		built.err = fmt.Errorf("OCI layout with %d manifests", len(im.Manifests))
		return
	}
	if built.img, err = idx.Image(im.Manifests[0].Digest); err != nil {
		built.err = err
		return
	}
	built.rootfs = filepath.Join(dir, "extracted")
	built.err = extract(built.img, built.rootfs)
}

// extract writes the image's layers' regular files and directories under
// dst.
func extract(img v1.Image, dst string) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return err
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
			p := filepath.Join(dst, filepath.Clean("/"+h.Name))
			switch h.Typeflag {
			case tar.TypeDir:
				err = os.MkdirAll(p, 0o755)
			case tar.TypeReg:
				var f *os.File
				if f, err = os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode)&0o777); err == nil {
					_, err = io.Copy(f, tr)
					if cerr := f.Close(); err == nil {
						err = cerr
					}
				}
			default:
				err = fmt.Errorf("%s: unexpected tar entry type %c", h.Name, h.Typeflag)
			}
			if err != nil {
				rc.Close()
				return err
			}
		}
		rc.Close()
	}
	return nil
}

// builtImage returns the image `make image` built, failing t if it could not.
func builtImage(t *testing.T) v1.Image {
	t.Helper()
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.img
}
