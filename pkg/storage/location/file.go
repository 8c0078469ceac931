package location

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"gopkg.in/yaml.v3"

	"github.com/backupd/backupd/internal/configyaml"
)

// ParseFile reads a storage config file: either backupd's whole config
// file, whose storage section is used (its other keys are left to the
// daemon), or a storage section alone. Unknown keys, and values of the
// wrong kind, are errors of one line naming the key (and the accepted
// keys); the file's name starts every error.
func ParseFile(path string) (Config, error) {
	var cfg Config
	b, err := os.ReadFile(path)
	if err != nil {
		return cfg, fileError(path, err)
	}
	if err := parse(b, &cfg); err != nil {
		return cfg, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

func parse(b []byte, cfg *Config) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return configyaml.Decode(b, cfg) // the same syntax error, in one line
	}
	if len(doc.Content) == 0 {
		return nil // empty
	}
	top := doc.Content[0]
	if top.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(top.Content); i += 2 {
			if top.Content[i].Value == "storage" {
				return configyaml.DecodeNode(top.Content[i+1], cfg, "storage")
			}
		}
	}
	return configyaml.DecodeNode(top, cfg, "storage")
}

// fileError is err, from reading path, as "PATH: reason".
func fileError(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("%s: %w", path, err)
}
