package local

import "errors"

// Config configures a local directory storage.
type Config struct {
	// Dir is the directory that holds the objects. It is created (mode
	// 0700, with missing parents) if it does not exist, unless MustExist
	// is set. A relative Dir is resolved against the working directory
	// when the storage is opened.
	Dir string
	// MustExist makes Open fail, with an error wrapping
	// storage.ErrNoBucket, when Dir does not exist, instead of creating
	// it: for commands that only read.
	MustExist bool
}

// Validate reports whether c can be used to open a storage.
func (c Config) Validate() error {
	if c.Dir == "" {
		return errors.New("local: config: dir is empty")
	}
	return nil
}
