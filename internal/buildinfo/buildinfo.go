// Package buildinfo says which release a binary is, for --version.
package buildinfo

import "runtime/debug"

// String is what --version prints: version, the release the binary was
// built as (set with -ldflags "-X main.version=VERSION" by
// deploy/image/build-binaries.sh, `make build` and `make image`), when it
// is set; else the module version of the build info (`go install
// ...@v1.2.3`), else "devel"; followed by the VCS revision when the build
// info has one.
func String(version string) string {
	v := version
	bi, ok := debug.ReadBuildInfo()
	if v == "" {
		v = "devel"
		if ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
	}
	if ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				v += " (" + s.Value + ")"
			}
		}
	}
	return v
}
