package azure

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"

	"github.com/backupd/backupd/internal/testservers"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/storagetest"
)

func TestMain(m *testing.M) { testservers.Main(m) }

const testPrefix = "repo/owner1"

func TestConformance(t *testing.T) {
	srv := testservers.Azurite(t)
	opts := storagetest.Options{MaxKeyLength: maxNameLength - len(testPrefix) - 1}
	storagetest.RunWithOptions(t, opts, func(t *testing.T) storage.Storage {
		cfg := azuriteConfig(srv, srv.NewContainer(t))
		cfg.Prefix = testPrefix
		cfg.BlockSize = MinBlockSize // objects over 1 MiB go up in blocks
		s := open(t, cfg)
		s.listPageSize = 1000 // listings of over 1000 objects span pages
		return s
	})
}

func azuriteConfig(srv *testservers.AzuriteServer, container string) Config {
	return Config{Container: container, Endpoint: srv.BlobEndpoint, AccountName: srv.AccountName, AccountKey: srv.AccountKey}
}

func open(t *testing.T, cfg Config) *Storage {
	t.Helper()
	s, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	s.uploadGrace = 0 // uploads of a test are seconds old
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// adminClient is a container client of our own, to look behind the backend.
func adminClient(t *testing.T, srv *testservers.AzuriteServer, name string) *container.Client {
	t.Helper()
	cred, err := container.NewSharedKeyCredential(srv.AccountName, srv.AccountKey)
	if err != nil {
		t.Fatal(err)
	}
	opts := &container.ClientOptions{}
	opts.Retry = policy.RetryOptions{MaxRetries: -1}
	c, err := container.NewClientWithSharedKeyCredential(srv.BlobEndpoint+"/"+name, cred, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func randomName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func TestConfigValidate(t *testing.T) {
	good := Config{Container: "backups", Prefix: "repo/o1", Endpoint: "http://127.0.0.1:10000/devstoreaccount1"}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	const key = "c2VjcmV0a2V5c2VjcmV0a2V5"
	for _, tc := range []struct {
		name  string
		edit  func(*Config)
		param string
	}{
		{"no container", func(c *Config) { c.Container = "" }, "container"},
		{"upper-case container", func(c *Config) { c.Container = "Backups" }, "container"},
		{"short container", func(c *Config) { c.Container = "ab" }, "container"},
		{"long container", func(c *Config) { c.Container = strings.Repeat("a", 64) }, "container"},
		{"double hyphen", func(c *Config) { c.Container = "a--b" }, "container"},
		{"leading hyphen", func(c *Config) { c.Container = "-ab" }, "container"},
		{"underscore", func(c *Config) { c.Container = "a_b" }, "container"},
		{"absolute prefix", func(c *Config) { c.Prefix = "/repo" }, "prefix"},
		{"trailing slash prefix", func(c *Config) { c.Prefix = "repo/" }, "prefix"},
		{"dot-dot prefix", func(c *Config) { c.Prefix = "repo/../x" }, "prefix"},
		{"long prefix", func(c *Config) { c.Prefix = strings.Repeat("p", 1024) }, "prefix"},
		{"endpoint scheme", func(c *Config) { c.Endpoint = "ftp://host/x" }, "endpoint"},
		{"endpoint without host", func(c *Config) { c.Endpoint = "http:///x" }, "endpoint"},
		{"endpoint with SAS", func(c *Config) { c.Endpoint = "https://a.blob.core.windows.net/?sv=1&sig=" + key }, "endpoint"},
		{"endpoint with userinfo", func(c *Config) { c.Endpoint = "https://u:" + key + "@a.blob.core.windows.net" }, "endpoint"},
		{"account name", func(c *Config) { c.AccountName = "Account_1" }, "accountname"},
		{"account key not base64", func(c *Config) { c.AccountName = "acct"; c.AccountKey = key + "!*" }, "accountkey"},
		{"key and connection string", func(c *Config) {
			c.AccountKey = key
			c.ConnectionString = "AccountName=acct;AccountKey=" + key
		}, "connectionstring"},
		{"connection string garbage", func(c *Config) { c.ConnectionString = key }, "connectionstring"},
		{"connection string bad key", func(c *Config) { c.ConnectionString = "AccountName=acct;AccountKey=" + key + "!*" }, "connectionstring"},
		{"connection string no credentials", func(c *Config) { c.ConnectionString = "AccountName=acct" }, "connectionstring"},
		{"connection string bad endpoint", func(c *Config) {
			c.ConnectionString = "AccountName=acct;AccountKey=" + key + ";BlobEndpoint=ftp://x"
		}, "connectionstring"},
		{"block size small", func(c *Config) { c.BlockSize = 1000 }, "blocksize"},
		{"block size large", func(c *Config) { c.BlockSize = 1 << 30 }, "blocksize"},
		{"negative concurrency", func(c *Config) { c.Concurrency = -1 }, "concurrency"},
		{"large concurrency", func(c *Config) { c.Concurrency = MaxConcurrency + 1 }, "concurrency"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.edit(&c)
			err := c.Validate()
			if err == nil {
				t.Fatalf("Validate(%v) = nil, want an error naming %s", c, tc.param)
			}
			if !strings.Contains(err.Error(), tc.param) {
				t.Errorf("Validate: %q does not name %s", err, tc.param)
			}
			if strings.Contains(err.Error(), key) {
				t.Errorf("Validate: %q shows the secret", err)
			}
		})
	}
}

func TestConfigRedacted(t *testing.T) {
	const key = "c2VjcmV0a2V5c2VjcmV0a2V5"
	c := Config{Container: "backups", AccountName: "acct", AccountKey: key, ConnectionString: "AccountName=acct;AccountKey=" + key}
	for _, s := range []string{c.String(), fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", c, c, c, c), fmt.Sprintf("%+v", c.Redacted())} {
		if strings.Contains(s, key) {
			t.Errorf("secret shown in %s", s)
		}
		if !strings.Contains(s, "acct") || !strings.Contains(s, "REDACTED") {
			t.Errorf("%s: want the account name and REDACTED", s)
		}
	}
	if c.AccountKey != key {
		t.Error("Redacted changed the original")
	}
}

func TestConfigFromURL(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want Config
	}{
		{"azblob://backups/repo/owner?endpoint=http%3A%2F%2F127.0.0.1%3A10000%2Fdevstoreaccount1",
			Config{Container: "backups", Prefix: "repo/owner", Endpoint: "http://127.0.0.1:10000/devstoreaccount1"}},
		{"azblob://backups", Config{Container: "backups"}},
		{"azblob://backups/", Config{Container: "backups"}},
		{"azblob://backups/p/?blocksize=2097152&concurrency=8&accountname=acct1",
			Config{Container: "backups", Prefix: "p", AccountName: "acct1", BlockSize: 2 << 20, Concurrency: 8}},
	} {
		u, err := url.Parse(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ConfigFromURL(u)
		if err != nil {
			t.Errorf("ConfigFromURL(%s): %v", tc.url, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ConfigFromURL(%s) = %v, want %v", tc.url, got, tc.want)
		}
	}
	for _, tc := range []struct{ url, want string }{
		{"s3://backups/p", "scheme"},
		{"azblob://user:pw@backups/p", "credentials"},
		{"azblob://backups/p?accountkey=c2VjcmV0", "credential"},
		{"azblob://backups/p?sig=c2VjcmV0", "credential"},
		{"azblob://backups/p?connectionstring=c2VjcmV0", "credential"},
		{"azblob://backups/p?region=west", `"region"`},
		{"azblob://backups/p?blocksize=big", "blocksize"},
		{"azblob://backups/p?blocksize=1", "blocksize"},
		{"azblob://backups/p?concurrency=x", "concurrency"},
		{"azblob://backups/p?endpoint=a&endpoint=b", "endpoint"},
		{"azblob://backups/p?endpoint=ftp://x", "endpoint"},
		{"azblob://Backups/p", "container"},
		{"azblob:///p", "azblob://CONTAINER/PREFIX"},
		{"azblob://backups:10000/p", "port"},
		{"azblob://backups/a//b", "prefix"},
		{"azblob://backups/p#frag", "fragment"},
	} {
		u, err := url.Parse(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		_, err = ConfigFromURL(u)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ConfigFromURL(%s): %v, want an error about %s", tc.url, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "c2VjcmV0") {
			t.Errorf("ConfigFromURL(%s): %q shows the secret", tc.url, err)
		}
	}
}

func TestResolveCredentials(t *testing.T) {
	const k1, k2, k3 = "a2V5MQ==", "a2V5Mg==", "a2V5Mw=="
	t.Setenv(EnvAccount, "")
	t.Setenv(EnvKey, "")
	t.Setenv(EnvConnectionString, "")
	base := Config{Container: "backups"}
	check := func(what string, c Config, wantEndpoint, wantName, wantKey, wantSAS string) {
		t.Helper()
		cr, err := c.resolveCredentials()
		if err != nil {
			t.Errorf("%s: %v", what, err)
			return
		}
		if cr.endpoint != wantEndpoint || cr.accountName != wantName || cr.accountKey != wantKey || cr.sas != wantSAS {
			t.Errorf("%s: got endpoint %q name %q key %q sas %q; want %q %q %q %q", what,
				cr.endpoint, cr.accountName, cr.accountKey, cr.sas, wantEndpoint, wantName, wantKey, wantSAS)
		}
	}
	c := base
	c.AccountName, c.AccountKey = "acct", k1
	check("shared key", c, "https://acct.blob.core.windows.net", "acct", k1, "")
	c.Endpoint = "http://127.0.0.1:10000/acct/"
	check("shared key and endpoint", c, "http://127.0.0.1:10000/acct", "acct", k1, "")

	c = base
	c.ConnectionString = "DefaultEndpointsProtocol=http;AccountName=conn;AccountKey=" + k2 + ";EndpointSuffix=example.org"
	check("connection string", c, "http://conn.blob.example.org", "conn", k2, "")
	c.ConnectionString = "BlobEndpoint=https://x.example.org/;SharedAccessSignature=sv=1&sig=abc"
	check("SAS connection string", c, "https://x.example.org", "", "", "sv=1&sig=abc")
	c.ConnectionString = "UseDevelopmentStorage=true"
	check("development storage", c, devEndpoint, devAccountName, devAccountKey, "")

	// The environment, after the config.
	t.Setenv(EnvAccount, "envacct")
	t.Setenv(EnvKey, k3)
	check("key from the environment", base, "https://envacct.blob.core.windows.net", "envacct", k3, "")
	c = base
	c.AccountName = "cfgacct"
	check("config account, environment key", c, "https://cfgacct.blob.core.windows.net", "cfgacct", k3, "")
	c.AccountKey = k1
	check("config key first", c, "https://cfgacct.blob.core.windows.net", "cfgacct", k1, "")
	t.Setenv(EnvConnectionString, "AccountName=envconn;AccountKey="+k2)
	check("environment connection string before environment key", base, "https://envconn.blob.core.windows.net", "envconn", k2, "")
	check("config key before environment connection string", c, "https://cfgacct.blob.core.windows.net", "cfgacct", k1, "")

	// Failures name what is missing and show no secret.
	t.Setenv(EnvConnectionString, "")
	t.Setenv(EnvAccount, "")
	c = base
	c.AccountKey = k1
	if _, err := c.resolveCredentials(); err == nil || !strings.Contains(err.Error(), "accountname") || strings.Contains(err.Error(), k1) {
		t.Errorf("key without account name: %v", err)
	}
	t.Setenv(EnvKey, "")
	if _, err := base.resolveCredentials(); err == nil || !strings.Contains(err.Error(), "endpoint") {
		t.Errorf("default credential without endpoint or account: %v", err)
	}
	c = base
	c.Endpoint = "http://127.0.0.1:1/acct"
	if _, err := c.resolveCredentials(); err == nil || !strings.Contains(err.Error(), "https") {
		t.Errorf("default credential over http: %v", err)
	}
	t.Setenv(EnvConnectionString, "AccountName=x;AccountKey="+k1+"!")
	if _, err := base.resolveCredentials(); err == nil || strings.Contains(err.Error(), k1) {
		t.Errorf("bad connection string in the environment: %v", err)
	}
}

func TestNameEncoding(t *testing.T) {
	for key, want := range map[string]string{
		"data/ab/0123":       "data/ab/0123",
		"trailing.":          "trailing.%",
		"a./b./c":            "a.%/b.%/c",
		"...":                "...%",
		"pct%":               "pct%%",
		"pct%%":              "pct%%%",
		"dot.%":              "dot.%%",
		"mid.dle/per%cent/x": "mid.dle/per%cent/x",
		".hidden/..dots":     ".hidden/..dots",
	} {
		if got := encodeName(key); got != want {
			t.Errorf("encodeName(%q) = %q, want %q", key, got, want)
		}
		if got, ok := decodeName(want); !ok || got != key {
			t.Errorf("decodeName(%q) = %q, %t; want %q", want, got, ok, key)
		}
		if strings.Contains(want+"/", "./") {
			t.Errorf("encodeName(%q) = %q has a segment ending in a dot", key, want)
		}
	}
	// Names encodeName never produces are not keys.
	for _, name := range []string{"trailing.", "x/a./y", "pct%"} {
		if key, ok := decodeName(name); ok {
			t.Errorf("decodeName(%q) = %q, want no key", name, key)
		}
	}
	// A prefix's encoding is a prefix of the encoding of every key that
	// starts with it.
	keys := []string{"a.", "a.b", "a./c", "a.%", "a.%/d", "ab./x", "a", "b%c", "b%/x", "b%"}
	for _, k := range keys {
		for i := 0; i <= len(k); i++ {
			p := k[:i]
			if !strings.HasPrefix(encodeName(k), encodePrefix(p)) {
				t.Errorf("encodeName(%q) = %q does not start with encodePrefix(%q) = %q", k, encodeName(k), p, encodePrefix(p))
			}
		}
	}
}

func TestMapErr(t *testing.T) {
	respErr := func(status int, code string) error {
		req, _ := http.NewRequest(http.MethodGet, "https://acct.blob.core.windows.net/c/b?sv=1&sig=c2VjcmV0", nil)
		resp := &http.Response{
			StatusCode: status,
			Status:     http.StatusText(status),
			Header:     http.Header{"X-Ms-Error-Code": {code}, "X-Ms-Request-Id": {"req-1"}},
			Body:       io.NopCloser(strings.NewReader("<Error><Code>" + code + "</Code></Error>")),
			Request:    req,
		}
		return runtime.NewResponseError(resp)
	}
	for _, tc := range []struct {
		err                       error
		notFound, perm, transient bool
	}{
		{respErr(404, "BlobNotFound"), true, false, false},
		{respErr(404, "ContainerNotFound"), true, false, false},
		{respErr(403, "AuthorizationPermissionMismatch"), false, true, false},
		{respErr(403, "AuthenticationFailed"), false, true, false},
		{respErr(401, "NoAuthenticationInformation"), false, true, false},
		{respErr(503, "ServerBusy"), false, false, true},
		{respErr(500, "OperationTimedOut"), false, false, true},
		{respErr(500, "InternalError"), false, false, true},
		{respErr(429, "TooManyRequests"), false, false, true},
		{respErr(408, "RequestTimeout"), false, false, true},
		{respErr(409, "ContainerBeingDeleted"), false, false, true},
		{respErr(400, "InvalidHeaderValue"), false, false, false},
		{respErr(412, "ConditionNotMet"), false, false, false},
		{&url.Error{Op: "Get", URL: "https://acct.blob.core.windows.net/c/b?sig=c2VjcmV0", Err: &net.OpError{Op: "read", Err: errors.New("connection reset by peer")}}, false, false, true},
		{&url.Error{Op: "Get", URL: "https://h/c?sig=c2VjcmV0", Err: io.ErrUnexpectedEOF}, false, false, true},
		{&url.Error{Op: "Get", URL: "https://h/c?sig=c2VjcmV0", Err: context.Canceled}, false, false, false},
		{&url.Error{Op: "Get", URL: "https://h/c", Err: &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}}, false, false, false},
		{context.DeadlineExceeded, false, false, false},
		{errors.New("something else"), false, false, false},
	} {
		err := mapErr(tc.err)
		if errors.Is(err, storage.ErrNotFound) != tc.notFound || errors.Is(err, storage.ErrPermission) != tc.perm || storage.IsTransient(err) != tc.transient {
			t.Errorf("mapErr(%v) = %v: not found %t, permission %t, transient %t; want %t, %t, %t", tc.err, err,
				errors.Is(err, storage.ErrNotFound), errors.Is(err, storage.ErrPermission), storage.IsTransient(err),
				tc.notFound, tc.perm, tc.transient)
		}
		if strings.Contains(err.Error(), "c2VjcmV0") || strings.Contains(err.Error(), "\n") {
			t.Errorf("mapErr: %q shows the SAS signature or is not one line", err)
		}
	}
	if err := mapErr(respErr(404, "BlobNotFound")); !strings.Contains(err.Error(), "404 BlobNotFound") || !strings.Contains(err.Error(), "req-1") {
		t.Errorf("mapErr: %q lacks the status, code or request ID", err)
	}
	if err := mapErr(&url.Error{Op: "Get", URL: "https://h/c?sig=x", Err: context.Canceled}); !errors.Is(err, context.Canceled) {
		t.Errorf("mapErr of a cancelled request: %v does not wrap context.Canceled", err)
	}
}

func TestCreateContainer(t *testing.T) {
	srv := testservers.Azurite(t)
	ctx := t.Context()
	name := randomName("create-")
	admin := adminClient(t, srv, name)
	t.Cleanup(func() { _, _ = admin.Delete(context.Background(), nil) })
	cfg := azuriteConfig(srv, name)

	// Without CreateContainer a missing container is an error, and stays
	// missing.
	if _, err := New(ctx, cfg); !errors.Is(err, storage.ErrNotFound) || !strings.Contains(err.Error(), name) {
		t.Fatalf("New on a missing container: %v, want ErrNotFound naming it", err)
	}
	if _, err := admin.GetProperties(ctx, nil); !errors.Is(mapErr(err), storage.ErrNotFound) {
		t.Fatalf("container exists after New without CreateContainer: %v", err)
	}

	// With it, the container is created private, and an existing one is
	// fine.
	cfg.CreateContainer = true
	s := open(t, cfg)
	props, err := admin.GetProperties(ctx, nil)
	if err != nil {
		t.Fatalf("container not created: %v", err)
	}
	if props.BlobPublicAccess != nil && *props.BlobPublicAccess != "" {
		t.Errorf("container created with public access %q", *props.BlobPublicAccess)
	}
	if err := s.Put(ctx, "k", bytes.NewReader([]byte("v")), 1); err != nil {
		t.Fatal(err)
	}
	s2 := open(t, cfg)
	if b, err := storage.ReadAll(ctx, s2, "k", 0, -1); err != nil || string(b) != "v" {
		t.Errorf("after a second New with CreateContainer: %q, %v", b, err)
	}

	// An existing container that allows public access is refused.
	pub := randomName("public-")
	padmin := adminClient(t, srv, pub)
	if _, err := padmin.Create(ctx, &container.CreateOptions{Access: to.Ptr(container.PublicAccessTypeBlob)}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = padmin.Delete(context.Background(), nil) })
	pcfg := azuriteConfig(srv, pub)
	pcfg.CreateContainer = true
	if _, err := New(ctx, pcfg); err == nil || !strings.Contains(err.Error(), "public access") {
		t.Errorf("New with CreateContainer on a public container: %v, want a refusal", err)
	}
}

func TestWrongKey(t *testing.T) {
	srv := testservers.Azurite(t)
	cfg := azuriteConfig(srv, srv.NewContainer(t))
	cfg.AccountKey = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 64))
	_, err := New(t.Context(), cfg)
	if !errors.Is(err, storage.ErrPermission) || storage.IsTransient(err) {
		t.Errorf("New with a wrong key: %v, want a permanent ErrPermission", err)
	}
	if err != nil && strings.Contains(err.Error(), cfg.AccountKey) {
		t.Errorf("error shows the key: %v", err)
	}
}

func TestConnectionStrings(t *testing.T) {
	srv := testservers.Azurite(t)
	ctx := t.Context()
	name := srv.NewContainer(t)
	roundTrip := func(what string, s *Storage) {
		t.Helper()
		if err := s.Put(ctx, what+"/obj", bytes.NewReader([]byte(what)), int64(len(what))); err != nil {
			t.Fatalf("%s: Put: %v", what, err)
		}
		if b, err := storage.ReadAll(ctx, s, what+"/obj", 0, -1); err != nil || string(b) != what {
			t.Errorf("%s: Get = %q, %v", what, b, err)
		}
		var keys []string
		if err := s.List(ctx, what+"/", func(oi storage.ObjectInfo) error { keys = append(keys, oi.Key); return nil }); err != nil || len(keys) != 1 {
			t.Errorf("%s: List = %q, %v", what, keys, err)
		}
		if err := s.Delete(ctx, what+"/obj"); err != nil {
			t.Errorf("%s: Delete: %v", what, err)
		}
	}
	roundTrip("shared-key", open(t, Config{Container: name, ConnectionString: srv.ConnectionString}))

	// A connection string with a container SAS token.
	sasURL, err := adminClient(t, srv, name).GetSASURL(
		sas.ContainerPermissions{Read: true, Add: true, Create: true, Write: true, Delete: true, List: true},
		time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(sasURL)
	if err != nil {
		t.Fatal(err)
	}
	sig := u.Query().Get("sig")
	sasConn := "BlobEndpoint=" + srv.BlobEndpoint + ";SharedAccessSignature=" + u.RawQuery
	roundTrip("sas", open(t, Config{Container: name, ConnectionString: sasConn}))

	// A read-only SAS cannot write: a permanent ErrPermission.
	roSAS, err := adminClient(t, srv, name).GetSASURL(sas.ContainerPermissions{Read: true, List: true}, time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	ru, _ := url.Parse(roSAS)
	ro := open(t, Config{Container: name, ConnectionString: "BlobEndpoint=" + srv.BlobEndpoint + ";SharedAccessSignature=" + ru.RawQuery})
	err = ro.Put(ctx, "ro/obj", bytes.NewReader([]byte("x")), 1)
	if !errors.Is(err, storage.ErrPermission) || storage.IsTransient(err) {
		t.Errorf("Put with a read-only SAS: %v, want a permanent ErrPermission", err)
	}

	// An unreachable endpoint is a transient error that shows no SAS.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String() + "/devstoreaccount1"
	l.Close()
	_, err = New(ctx, Config{Container: name, ConnectionString: "BlobEndpoint=" + closed + ";SharedAccessSignature=" + u.RawQuery})
	if err == nil || !storage.IsTransient(err) {
		t.Errorf("New on a closed port: %v, want a transient error", err)
	}
	if err != nil && (strings.Contains(err.Error(), sig) || strings.Contains(err.Error(), url.QueryEscape(sig))) {
		t.Errorf("error shows the SAS signature: %v", err)
	}
}

// failingBody is an *io.SectionReader (read in place by Put) whose reads
// call hook once they reach offset at (or fail, if hook is nil).
func failingBody(data []byte, at int64, hook func()) *io.SectionReader {
	return io.NewSectionReader(&failingReaderAt{r: bytes.NewReader(data), at: at, hook: hook}, 0, int64(len(data)))
}

type failingReaderAt struct {
	r    *bytes.Reader
	at   int64
	hook func()
	once sync.Once
}

func (f *failingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.at {
		if f.hook == nil {
			return 0, errors.New("disk on fire")
		}
		f.once.Do(f.hook)
	}
	return f.r.ReadAt(p, off)
}

func TestFailedBlockUploadLeavesNoObject(t *testing.T) {
	srv := testservers.Azurite(t)
	ctx := t.Context()
	name := srv.NewContainer(t)
	cfg := azuriteConfig(srv, name)
	cfg.BlockSize, cfg.Concurrency = MinBlockSize, 2
	s := open(t, cfg)
	admin := adminClient(t, srv, name)
	data := bytes.Repeat([]byte("0123456789abcdef"), 5<<20/16) // 5 blocks

	// The body fails in its fourth block: the blocks staged before stay
	// uncommitted, and no object appears.
	fail := failingBody(data, 3<<20+5, nil)
	err := s.Put(ctx, "fail/new", fail, int64(len(data)))
	if err == nil || storage.IsTransient(err) || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("Put with a failing body: %v, want the body's permanent error", err)
	}
	if _, err := s.Stat(ctx, "fail/new"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat after a failed Put: %v, want ErrNotFound", err)
	}
	if bl, err := admin.NewBlockBlobClient("fail/new").GetBlockList(ctx, blockblob.BlockListTypeAll, nil); err == nil {
		if len(bl.CommittedBlocks) != 0 || len(bl.UncommittedBlocks) == 0 {
			t.Errorf("after a failed Put: %d committed, %d uncommitted blocks; want 0 and some",
				len(bl.CommittedBlocks), len(bl.UncommittedBlocks))
		}
	} else if !errors.Is(mapErr(err), storage.ErrNotFound) {
		t.Errorf("GetBlockList: %v", err)
	}

	// Over an existing object, the old content stays, also when the Put is
	// cancelled midway.
	old := []byte("old content")
	if err := s.Put(ctx, "fail/old", bytes.NewReader(old), int64(len(old))); err != nil {
		t.Fatal(err)
	}
	fail = failingBody(data, 3<<20+5, nil)
	if err := s.Put(ctx, "fail/old", fail, int64(len(data))); err == nil {
		t.Error("Put with a failing body over an object succeeded")
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cancelling := failingBody(data, 3<<20+5, cancel)
	if err := s.Put(cctx, "fail/old", cancelling, int64(len(data))); !errors.Is(err, context.Canceled) {
		t.Errorf("Put cancelled midway: %v, want context.Canceled", err)
	}
	if b, err := storage.ReadAll(ctx, s, "fail/old", 0, -1); err != nil || !bytes.Equal(b, old) {
		t.Errorf("fail/old = %d bytes, %v after failed overwrites; want the old content", len(b), err)
	}

	// Likewise for an object sent in one request.
	if err := s.Put(ctx, "fail/old", failingBody(data[:500<<10], 100<<10, nil), 500<<10); err == nil ||
		storage.IsTransient(err) || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("Put of one block with a failing body: %v, want the body's permanent error", err)
	}

	// A body shorter than size, read in place, fails and stores nothing.
	if err := s.Put(ctx, "fail/short", bytes.NewReader(data), int64(len(data))+1); err == nil || !errors.Is(err, errShortBody) {
		t.Errorf("Put with a short body: %v, want errShortBody", err)
	}
	if _, err := s.Stat(ctx, "fail/short"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat after a short Put: %v, want ErrNotFound", err)
	}

	// A successful large Put is committed as blocks of BlockSize.
	if err := s.Put(ctx, "ok/large", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	bl, err := admin.NewBlockBlobClient("ok/large").GetBlockList(ctx, blockblob.BlockListTypeCommitted, nil)
	if err != nil || len(bl.CommittedBlocks) != 5 {
		t.Errorf("ok/large: %v, %v; want 5 committed blocks", bl.CommittedBlocks, err)
	}
}

// Committing a block list discards every uncommitted block of the blob,
// also those another Put of the same key has staged. That Put's commit
// then fails; the error is transient, since a new try succeeds.
func TestConcurrentCommitIsTransient(t *testing.T) {
	srv := testservers.Azurite(t)
	ctx := t.Context()
	cfg := azuriteConfig(srv, srv.NewContainer(t))
	cfg.BlockSize, cfg.Concurrency = MinBlockSize, 1
	s := open(t, cfg)
	a := bytes.Repeat([]byte("a"), 3<<20)
	b := bytes.Repeat([]byte("b"), 2<<20+1)
	var putB error
	// While A reads its third block (its first is staged: Concurrency 1),
	// B is put and committed. The plain reader makes A buffer its blocks.
	body := &hookedReader{r: bytes.NewReader(a), at: 2 << 20, hook: func() {
		putB = s.Put(ctx, "same", bytes.NewReader(b), int64(len(b)))
	}}
	errA := s.Put(ctx, "same", body, int64(len(a)))
	if putB != nil {
		t.Fatalf("Put B: %v", putB)
	}
	got, err := storage.ReadAll(ctx, s, "same", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case errA == nil && bytes.Equal(got, a):
		t.Log("the service kept A's blocks; A won")
	case errA != nil && storage.IsTransient(errA) && bytes.Equal(got, b):
	default:
		t.Errorf("Put A: %v; object holds %d bytes; want A transient failure and B's content", errA, len(got))
	}
	if err := s.Put(ctx, "same", bytes.NewReader(a), int64(len(a))); err != nil {
		t.Errorf("retried Put A: %v", err)
	}
}

// hookedReader is a plain io.ReadSeeker (no ReadAt) that calls hook once
// when a read reaches offset at.
type hookedReader struct {
	r    *bytes.Reader
	at   int64
	hook func()
	done bool
}

func (h *hookedReader) Read(p []byte) (int, error) {
	pos, _ := h.r.Seek(0, io.SeekCurrent)
	if !h.done && pos+int64(len(p)) > h.at {
		if pos < h.at {
			p = p[:h.at-pos]
		} else {
			h.done = true
			h.hook()
		}
	}
	return h.r.Read(p)
}

func (h *hookedReader) Seek(off int64, whence int) (int64, error) { return h.r.Seek(off, whence) }

func TestKeysAzureCannotName(t *testing.T) {
	srv := testservers.Azurite(t)
	ctx := t.Context()
	cfg := azuriteConfig(srv, srv.NewContainer(t))
	cfg.Prefix = "pre"
	s := open(t, cfg)
	for _, key := range []string{
		strings.Repeat("k", 1021),       // 1025 bytes with "pre/"
		strings.Repeat("a/", 253) + "b", // 255 segments with "pre"
	} {
		if err := s.Put(ctx, key, bytes.NewReader([]byte("x")), 1); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Put(%.20q...): %v, want ErrInvalidKey", key, err)
		}
		if _, err := s.Stat(ctx, key); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Stat(%.20q...): %v, want ErrInvalidKey", key, err)
		}
	}
	// Keys with segments ending in a dot are stored encoded and listed
	// decoded.
	for _, key := range []string{"dots./x.", "pct%/y"} {
		if err := s.Put(ctx, key, bytes.NewReader([]byte(key)), int64(len(key))); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	pager := adminClient(t, srv, cfg.Container).NewListBlobsFlatPager(nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range page.Segment.BlobItems {
			names = append(names, *it.Name)
		}
	}
	if fmt.Sprint(names) != "[pre/dots.%/x.% pre/pct%%/y]" {
		t.Errorf("blob names = %q", names)
	}
	for prefix, want := range map[string]int{"dots.": 1, "dots./": 1, "dots./x.": 1, "pct%": 1, "pct%/": 1, "": 2, "dots./x./": 0} {
		n := 0
		if err := s.List(ctx, prefix, func(storage.ObjectInfo) error { n++; return nil }); err != nil || n != want {
			t.Errorf("List(%q) = %d objects, %v; want %d", prefix, n, err, want)
		}
	}
}

// TestPutIfAbsentAzurite checks Azurite's handling of If-None-Match: * on
// Put Blob and on Put Block List: a second create-only write is refused
// (409 BlobAlreadyExists, ErrExists), one of racing writers wins.
func TestPutIfAbsentAzurite(t *testing.T) {
	srv := testservers.Azurite(t)
	ctx := t.Context()
	cfg := azuriteConfig(srv, srv.NewContainer(t))
	cfg.BlockSize = MinBlockSize
	s := open(t, cfg)
	for _, n := range []int{10, 3<<20 + 5} { // one request; blocks
		key := fmt.Sprintf("pia/%d", n)
		data := bytes.Repeat([]byte("f"), n)
		if err := s.PutIfAbsent(ctx, key, bytes.NewReader(data), int64(n)); err != nil {
			t.Fatalf("PutIfAbsent(%s) on a free key: %v", key, err)
		}
		for _, m := range []int{7, 2<<20 + 1} {
			err := s.PutIfAbsent(ctx, key, bytes.NewReader(bytes.Repeat([]byte("s"), m)), int64(m))
			if !errors.Is(err, storage.ErrExists) || storage.IsTransient(err) {
				t.Errorf("PutIfAbsent(%s) of %d bytes over %d: %v, want ErrExists", key, m, n, err)
			}
		}
		if got, err := storage.ReadAll(ctx, s, key, 0, -1); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s after refused writes: %d bytes, %v; want the first %d", key, len(got), err, n)
		}
	}
	for _, size := range []int{100, 2<<20 + 3} {
		const writers = 8
		key := fmt.Sprintf("race/%d", size)
		errs := make(chan error, writers)
		start := make(chan struct{})
		for w := range writers {
			go func() {
				<-start
				body := bytes.Repeat([]byte{'a' + byte(w)}, size+w)
				errs <- s.PutIfAbsent(ctx, key, bytes.NewReader(body), int64(len(body)))
			}()
		}
		close(start)
		won := 0
		for range writers {
			switch err := <-errs; {
			case err == nil:
				won++
			case !errors.Is(err, storage.ErrExists) || storage.IsTransient(err):
				t.Errorf("racing PutIfAbsent(%s): %v, want nil or ErrExists", key, err)
			}
		}
		if won != 1 {
			t.Errorf("%d of %d racing PutIfAbsent(%s) calls succeeded, want 1", won, writers, key)
		}
	}
}

// A name that holds only the uncommitted blocks of an interrupted upload
// is free: a create-only Put of any size takes it. (Azurite refuses a
// create-only Put Blob there, unlike Azure; the backend commits a block
// list instead, which both judge by the committed blob alone.)
func TestPutIfAbsentOverUncommittedBlocks(t *testing.T) {
	srv := testservers.Azurite(t)
	ctx := t.Context()
	name := srv.NewContainer(t)
	cfg := azuriteConfig(srv, name)
	cfg.BlockSize = MinBlockSize
	s := open(t, cfg)
	admin := adminClient(t, srv, name)
	for _, n := range []int{0, 10, 3<<20 + 5} {
		key := fmt.Sprintf("unc/%d", n)
		// An ID as long as the backend's own, as Azure requires of all
		// the blocks of a name.
		id := base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "%032x-%06d", n, 0))
		block := bytes.Repeat([]byte("x"), 1000)
		if _, err := admin.NewBlockBlobClient(key).StageBlock(ctx, id, streaming.NopCloser(bytes.NewReader(block)), nil); err != nil {
			t.Fatalf("StageBlock(%s): %v", key, err)
		}
		data := bytes.Repeat([]byte("d"), n)
		if err := s.PutIfAbsent(ctx, key, bytes.NewReader(data), int64(n)); err != nil {
			t.Errorf("PutIfAbsent(%s) over uncommitted blocks: %v", key, err)
			continue
		}
		checkData(t, s, key, data)
		err := s.PutIfAbsent(ctx, key, bytes.NewReader([]byte("again")), 5)
		if !errors.Is(err, storage.ErrExists) || storage.IsTransient(err) {
			t.Errorf("second PutIfAbsent(%s): %v, want ErrExists", key, err)
		}
		checkData(t, s, key, data)
	}
}

func checkData(t *testing.T, s *Storage, key string, want []byte) {
	t.Helper()
	if got, err := storage.ReadAll(t.Context(), s, key, 0, -1); err != nil || !bytes.Equal(got, want) {
		t.Errorf("%s: %d bytes, %v; want %d bytes", key, len(got), err, len(want))
	}
}

// A create-only Put of blocks whose blocks another Put's commit discarded
// (see TestConcurrentCommitIsTransient) finds the key taken: ErrExists,
// not a transient failure that a retry would turn into ErrExists anyway.
func TestPutIfAbsentLosesToConcurrentCommit(t *testing.T) {
	srv := testservers.Azurite(t)
	ctx := t.Context()
	cfg := azuriteConfig(srv, srv.NewContainer(t))
	cfg.BlockSize, cfg.Concurrency = MinBlockSize, 1
	s := open(t, cfg)
	a := bytes.Repeat([]byte("a"), 3<<20)
	b := bytes.Repeat([]byte("b"), 2<<20+1)
	var putB error
	body := &hookedReader{r: bytes.NewReader(a), at: 2 << 20, hook: func() {
		putB = s.PutIfAbsent(ctx, "same", bytes.NewReader(b), int64(len(b)))
	}}
	errA := s.PutIfAbsent(ctx, "same", body, int64(len(a)))
	if putB != nil {
		t.Fatalf("PutIfAbsent B: %v", putB)
	}
	if !errors.Is(errA, storage.ErrExists) || storage.IsTransient(errA) {
		t.Errorf("PutIfAbsent A, whose blocks B's commit discarded: %v, want ErrExists", errA)
	}
	if got, err := storage.ReadAll(ctx, s, "same", 0, -1); err != nil || !bytes.Equal(got, b) {
		t.Errorf("same = %d bytes, %v; want B's %d", len(got), err, len(b))
	}
}

// TestPutIfMatchAzurite checks Azurite's handling of If-Match on Put Blob
// and on Put Block List: a stale ETag is refused (412 ConditionNotMet,
// ErrVersionMismatch), as is any ETag for a missing blob (412 too, which
// the backend tells apart by asking), and one of racing writers wins.
func TestPutIfMatchAzurite(t *testing.T) {
	srv := testservers.Azurite(t)
	ctx := t.Context()
	cfg := azuriteConfig(srv, srv.NewContainer(t))
	cfg.BlockSize = MinBlockSize
	s := open(t, cfg)
	for _, n := range []int{10, 3<<20 + 5} { // one request; blocks
		key := fmt.Sprintf("pim/%d", n)
		put := func(data []byte, version string) (string, error) {
			return s.PutIfMatch(ctx, key, bytes.NewReader(data), int64(len(data)), version)
		}
		first := bytes.Repeat([]byte("f"), n)
		if err := s.Put(ctx, key, bytes.NewReader(first), int64(n)); err != nil {
			t.Fatal(err)
		}
		oi, err := s.Stat(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		second := bytes.Repeat([]byte("s"), n)
		v2, err := put(second, oi.Version)
		if err != nil {
			t.Fatalf("PutIfMatch(%s) of %d bytes with the current ETag: %v", key, n, err)
		}
		for _, m := range []int{7, 2<<20 + 1} {
			_, err := put(bytes.Repeat([]byte("x"), m), oi.Version)
			if !errors.Is(err, storage.ErrVersionMismatch) || errors.Is(err, storage.ErrNotFound) || storage.IsTransient(err) {
				t.Errorf("PutIfMatch(%s) of %d bytes with a stale ETag: %v, want ErrVersionMismatch", key, m, err)
			}
		}
		if got, err := storage.ReadAll(ctx, s, key, 0, -1); err != nil || !bytes.Equal(got, second) {
			t.Errorf("%s after refused writes: %d bytes, %v; want the second %d", key, len(got), err, n)
		}
		if _, err := s.PutIfMatch(ctx, key+"-missing", bytes.NewReader(first), int64(n), v2); !errors.Is(err, storage.ErrVersionMismatch) || !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("PutIfMatch of a missing blob of %d bytes: %v, want ErrVersionMismatch and ErrNotFound", n, err)
		}

		const writers = 8
		errs := make(chan error, writers)
		start := make(chan struct{})
		for w := range writers {
			go func() {
				<-start
				_, err := put(bytes.Repeat([]byte{'a' + byte(w)}, n+w), v2)
				errs <- err
			}()
		}
		close(start)
		won := 0
		for range writers {
			switch err := <-errs; {
			case err == nil:
				won++
			case !errors.Is(err, storage.ErrVersionMismatch) || storage.IsTransient(err):
				t.Errorf("racing PutIfMatch(%s): %v, want nil or ErrVersionMismatch", key, err)
			}
		}
		if won != 1 {
			t.Errorf("%d of %d racing PutIfMatch(%s) calls succeeded, want 1", won, writers, key)
		}
	}
}

// A PutIfMatch of blocks whose blocks another Put's commit discarded (see
// TestConcurrentCommitIsTransient) finds another version: that commit
// changed the ETag. ErrVersionMismatch, not a transient failure.
func TestPutIfMatchLosesToConcurrentCommit(t *testing.T) {
	srv := testservers.Azurite(t)
	ctx := t.Context()
	cfg := azuriteConfig(srv, srv.NewContainer(t))
	cfg.BlockSize, cfg.Concurrency = MinBlockSize, 1
	s := open(t, cfg)
	if err := s.Put(ctx, "same", strings.NewReader("base"), 4); err != nil {
		t.Fatal(err)
	}
	oi, err := s.Stat(ctx, "same")
	if err != nil {
		t.Fatal(err)
	}
	a := bytes.Repeat([]byte("a"), 3<<20)
	b := bytes.Repeat([]byte("b"), 2<<20+1)
	var putB error
	body := &hookedReader{r: bytes.NewReader(a), at: 2 << 20, hook: func() {
		_, putB = s.PutIfMatch(ctx, "same", bytes.NewReader(b), int64(len(b)), oi.Version)
	}}
	_, errA := s.PutIfMatch(ctx, "same", body, int64(len(a)), oi.Version)
	if putB != nil {
		t.Fatalf("PutIfMatch B: %v", putB)
	}
	if !errors.Is(errA, storage.ErrVersionMismatch) || storage.IsTransient(errA) {
		t.Errorf("PutIfMatch A, whose blocks B's commit discarded: %v, want ErrVersionMismatch", errA)
	}
	if got, err := storage.ReadAll(ctx, s, "same", 0, -1); err != nil || !bytes.Equal(got, b) {
		t.Errorf("same = %d bytes, %v; want B's %d", len(got), err, len(b))
	}
}

// TestDeleteIfMatchAzurite records that Azurite honours If-Match on Delete
// Blob (of the three test servers, the only one: see docs/STORAGE.md on
// why there is no DeleteIfMatch).
func TestDeleteIfMatchAzurite(t *testing.T) {
	srv := testservers.Azurite(t)
	ctx := t.Context()
	name := srv.NewContainer(t)
	s := open(t, azuriteConfig(srv, name))
	if err := s.Put(ctx, "k", strings.NewReader("one"), 3); err != nil {
		t.Fatal(err)
	}
	stale, err := s.Stat(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "k", strings.NewReader("two"), 3); err != nil {
		t.Fatal(err)
	}
	tag := azcore.ETag(`"` + stale.Version + `"`)
	_, err = adminClient(t, srv, name).NewBlobClient("k").Delete(ctx, &blob.DeleteOptions{AccessConditions: &blob.AccessConditions{
		ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfMatch: &tag},
	}})
	if !isStatus(err, http.StatusPreconditionFailed) {
		t.Errorf("Delete Blob with a stale If-Match: %v, want 412", err)
	}
	if got, err := storage.ReadAll(ctx, s, "k", 0, -1); err != nil || string(got) != "two" {
		t.Errorf("k after a refused Delete: %q, %v", got, err)
	}
}

// stageBlock stages one block of the blob name, as a Put of blocks whose
// writer died before the commit leaves it, and returns the blob's last
// modification as the listing of uncommitted blobs reports it.
func stageBlock(t *testing.T, admin *container.Client, name string) time.Time {
	t.Helper()
	ctx := t.Context()
	id := base64.StdEncoding.EncodeToString([]byte("dead-writer-000001"))
	if _, err := admin.NewBlockBlobClient(name).StageBlock(ctx, id, streamingBody([]byte("staged")), nil); err != nil {
		t.Fatalf("StageBlock(%s): %v", name, err)
	}
	pager := admin.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{Prefix: &name, Include: container.ListBlobsInclude{UncommittedBlobs: true}})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range page.Segment.BlobItems {
			if *it.Name == name {
				return *it.Properties.LastModified
			}
		}
	}
	t.Fatalf("uncommitted blob %s is not listed", name)
	return time.Time{}
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

func streamingBody(b []byte) nopCloser { return nopCloser{bytes.NewReader(b)} }

// uncommittedBlobs lists the blobs of the container that have only
// uncommitted blocks.
func uncommittedBlobs(t *testing.T, admin *container.Client) []string {
	t.Helper()
	committed := map[string]bool{}
	var names []string
	for _, inc := range []bool{false, true} {
		pager := admin.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{Include: container.ListBlobsInclude{UncommittedBlobs: inc}})
		for pager.More() {
			page, err := pager.NextPage(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			for _, it := range page.Segment.BlobItems {
				if !inc {
					committed[*it.Name] = true
				} else if !committed[*it.Name] {
					names = append(names, *it.Name)
				}
			}
		}
	}
	slices.Sort(names)
	return names
}

// TestCleanUploads deletes blobs with only uncommitted blocks under the
// prefix, last modified before the cutoff, and nothing else.
func TestCleanUploads(t *testing.T) {
	srv := testservers.Azurite(t)
	ctx := t.Context()
	name := srv.NewContainer(t)
	admin := adminClient(t, srv, name)
	cfg := azuriteConfig(srv, name)
	cfg.Prefix = "owner1"
	s := open(t, cfg)
	cfg.Prefix = "owner10"
	neighbour := open(t, cfg)
	// Not a second's wait for the listing to be younger than the blobs.
	s.cleanMinAge, neighbour.cleanMinAge = 0, 0

	if err := s.Put(ctx, "data/ab/empty", bytes.NewReader(nil), 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "data/ab/obj", bytes.NewReader([]byte("complete")), 8); err != nil {
		t.Fatal(err)
	}
	dead := stageBlock(t, admin, "owner1/data/ab/dead")
	stageBlock(t, admin, "owner1/index/dead")
	stageBlock(t, admin, "owner1/data/ab/obj") // a failed overwrite
	stageBlock(t, admin, "owner10/data/ab/dead")
	stageBlock(t, admin, "owner1/trailing.%/dead") // key "trailing./dead"
	if got, want := uncommittedBlobs(t, admin), []string{"owner1/data/ab/dead", "owner1/index/dead", "owner1/trailing.%/dead", "owner10/data/ab/dead"}; !slices.Equal(got, want) {
		t.Fatalf("uncommitted blobs %q, want %q", got, want)
	}

	// The cutoff is strict: a blob last modified at it is not older.
	if n, err := s.CleanUploads(ctx, "", dead); err != nil || n != 0 {
		t.Errorf("CleanUploads with the cutoff at the blobs' time = %d, %v; want 0", n, err)
	}
	if n, err := s.CleanUploads(ctx, "data/", dead.Add(time.Second)); err != nil || n != 1 {
		t.Errorf("CleanUploads(data/) = %d, %v; want 1", n, err)
	}
	if got, want := uncommittedBlobs(t, admin), []string{"owner1/index/dead", "owner1/trailing.%/dead", "owner10/data/ab/dead"}; !slices.Equal(got, want) {
		t.Errorf("uncommitted blobs after CleanUploads(data/): %q, want %q", got, want)
	}
	if n, err := s.CleanUploads(ctx, "trailing./", time.Now().Add(time.Hour)); err != nil || n != 1 {
		t.Errorf("CleanUploads(trailing./) = %d, %v; want 1", n, err)
	}
	if n, err := s.CleanUploads(ctx, "", time.Now().Add(time.Hour)); err != nil || n != 1 {
		t.Errorf("CleanUploads(\"\") = %d, %v; want 1 (index/dead)", n, err)
	}
	if got, want := uncommittedBlobs(t, admin), []string{"owner10/data/ab/dead"}; !slices.Equal(got, want) {
		t.Errorf("uncommitted blobs after cleaning owner1: %q, want %q", got, want)
	}
	if n, err := neighbour.CleanUploads(ctx, "", time.Now().Add(time.Hour)); err != nil || n != 1 {
		t.Errorf("neighbour's CleanUploads = %d, %v; want 1", n, err)
	}
	for key, want := range map[string]string{"data/ab/empty": "", "data/ab/obj": "complete"} {
		if got, err := storage.ReadAll(ctx, s, key, 0, -1); err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", key, got, err, want)
		}
	}
}

// A blob committed after CleanUploads listed it stays: one committed
// before the check that it has no committed content, and one committed
// between that check and the delete, which is conditional on the blob
// being unmodified since the time listed (here an hour earlier than the
// staging, so that the commit is later by the service's one-second clock).
func TestCleanUploadsSparesBlobsCommittedMeanwhile(t *testing.T) {
	srv := testservers.Azurite(t)
	ctx := t.Context()
	name := srv.NewContainer(t)
	admin := adminClient(t, srv, name)
	s := open(t, azuriteConfig(srv, name))
	for _, key := range []string{"early", "late"} {
		lm := stageBlock(t, admin, key)
		commit := func(string) {
			if err := s.Put(ctx, key, bytes.NewReader([]byte("committed")), 9); err != nil {
				t.Errorf("Put(%s): %v", key, err)
			}
		}
		s.beforeCleanDelete = nil
		if key == "early" {
			commit(key)
		} else {
			s.beforeCleanDelete = commit
			lm = lm.Add(-time.Hour)
		}
		if ok, err := s.deleteUncommitted(ctx, key, lm); ok || err != nil {
			t.Errorf("deleteUncommitted(%s) of a blob committed meanwhile = %t, %v; want false, nil", key, ok, err)
		}
		if got, err := storage.ReadAll(ctx, s, key, 0, -1); err != nil || string(got) != "committed" {
			t.Errorf("%s = %q, %v; want committed", key, got, err)
		}
	}
}

// An uncommitted blob is taken only once the listing is cleanMinAge
// younger than it (a second by default; here an hour), whatever before.
func TestCleanUploadsMinAge(t *testing.T) {
	srv := testservers.Azurite(t)
	ctx := t.Context()
	name := srv.NewContainer(t)
	admin := adminClient(t, srv, name)
	s := open(t, azuriteConfig(srv, name))
	s.cleanMinAge = time.Hour
	stageBlock(t, admin, "young")
	if n, err := s.CleanUploads(ctx, "", time.Now().Add(2*time.Hour)); err != nil || n != 0 {
		t.Errorf("CleanUploads of a blob younger than cleanMinAge = %d, %v; want 0", n, err)
	}
	if got := uncommittedBlobs(t, admin); !slices.Equal(got, []string{"young"}) {
		t.Errorf("uncommitted blobs %q, want [young]", got)
	}
	s.cleanMinAge = 0
	if n, err := s.CleanUploads(ctx, "", time.Now().Add(2*time.Hour)); err != nil || n != 1 {
		t.Errorf("CleanUploads with cleanMinAge 0 = %d, %v; want 1", n, err)
	}
}
