package location

import (
	"strings"
	"testing"

	"github.com/backupd/backupd/pkg/storage/s3"
)

func TestConfigResolveMergesURLOverFile(t *testing.T) {
	cfg := Config{
		URL: "s3://bucket/prefix?region=eu-west-1&endpoint=http://127.0.0.1:9000",
		S3:  s3.Config{AccessKey: "AKIAFROMFILE", SecretKey: "secret-from-file", Region: "us-east-1", ChunkSize: 8 << 20},
	}
	r, err := cfg.resolve()
	if err != nil {
		t.Fatal(err)
	}
	got := r.s3
	if got.Bucket != "bucket" || got.Region != "eu-west-1" || got.AccessKey != "AKIAFROMFILE" || got.SecretKey != "secret-from-file" || got.ChunkSize != 8<<20 {
		t.Fatalf("merged config: %+v", got.Redacted())
	}
	if strings.Contains(got.String(), "secret-from-file") {
		t.Fatal("String shows the secret key")
	}
}

func TestConfigValidate(t *testing.T) {
	cases := map[string]struct {
		cfg  Config
		want string
	}{
		"no url":          {Config{}, "no storage URL"},
		"bad placement":   {Config{URL: "file:///x", Placement: "everywhere"}, "placement"},
		"template":        {Config{URL: "gs://b", Placement: BucketPerOwner, BucketTemplate: "fixed"}, "bucket_template"},
		"file per owner":  {Config{URL: "file:///x", Placement: BucketPerOwner, BucketTemplate: "b-{owner}"}, "object store"},
		"connections":     {Config{URL: "file:///x", Connections: -1}, "connections"},
		"retry":           {Config{URL: "file:///x", Retry: RetryConfig{Attempts: 1000}}, "attempts"},
		"userinfo":        {Config{URL: "s3://AKIA:topsecret@bucket/p"}, "credentials do not belong"},
		"unknown scheme":  {Config{URL: "ftp://host/x"}, `"ftp"`},
		"relative file":   {Config{URL: "file:relative/path"}, ""},
		"secret in query": {Config{URL: "s3://b/p?region=us-east-1&secretkey=topsecret"}, "secretkey"},
	}
	for name, c := range cases {
		err := c.cfg.Validate()
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "topsecret") {
			t.Errorf("%s: error %q; want it to name %q and hide secrets", name, err, c.want)
		}
	}
	for _, ok := range []Config{
		{URL: "file:///srv/backups"},
		{URL: "s3://bucket/p?region=us-east-1", Connections: 16},
		{URL: "gs://bucket/p", Placement: BucketPerOwner, BucketTemplate: "backupd-{owner}"},
		{URL: "azblob://container/p?endpoint=http://127.0.0.1:10000/devstoreaccount1"},
		{URL: "minio://127.0.0.1:9000/bucket/p?secure=false"},
	} {
		if err := ok.Validate(); err != nil {
			t.Errorf("%s: %v", ok.URL, err)
		}
	}
}
