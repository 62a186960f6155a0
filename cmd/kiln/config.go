package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// cliConfig is ~/.config/kiln/config ($KILN_CONFIG): named contexts, each
// a region API and its token, like a kubeconfig.
//
//	current-context: prod
//	contexts:
//	  - name: prod
//	    server: https://kiln.example:9443
//	    server-ca: /etc/kiln/ca.pem
//	    token-file: ~/.config/kiln/prod.token
type cliConfig struct {
	CurrentContext string       `yaml:"current-context"`
	Contexts       []cliContext `yaml:"contexts"`
}

type cliContext struct {
	Name      string `yaml:"name"`
	Server    string `yaml:"server"`
	ServerCA  string `yaml:"server-ca"`
	Token     string `yaml:"token"`
	TokenFile string `yaml:"token-file"`
}

// configPath is $KILN_CONFIG, else ~/.config/kiln/config (XDG).
func configPath() string {
	if p := os.Getenv("KILN_CONFIG"); p != "" {
		return p
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "kiln", "config")
}

// loadContext reads the named context (the file's current one when name
// is empty); no file and no name is no context, not an error.
func loadContext(path, name string) (*cliContext, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && name == "" {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var c cliConfig
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if name == "" {
		name = c.CurrentContext
	}
	if name == "" {
		return nil, nil
	}
	for _, ctx := range c.Contexts {
		if ctx.Name != name {
			continue
		}
		if ctx.Token != "" {
			if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
				return nil, fmt.Errorf("config %s holds a token and others may read it (mode %s): chmod 600 it, or use token-file", path, fi.Mode().Perm())
			}
		}
		if ctx.TokenFile != "" {
			tf := ctx.TokenFile
			if rest, ok := strings.CutPrefix(tf, "~/"); ok {
				home, _ := os.UserHomeDir()
				tf = filepath.Join(home, rest)
			}
			t, err := os.ReadFile(tf)
			if err != nil {
				return nil, fmt.Errorf("context %s: token-file: %w", name, err)
			}
			ctx.Token = strings.TrimSpace(string(t))
		}
		return &ctx, nil
	}
	return nil, fmt.Errorf("config %s: no context %q", path, name)
}

// resolve fills what flags and the environment left open from the
// config's context: --server, $KILN_SERVER and $KILN_TOKEN win.
func (c *clientFlags) resolve() error {
	c.token = os.Getenv("KILN_TOKEN")
	if c.context == "" && (c.server != "" || c.endpoints != defaultEtcdEndpoints) {
		return nil // asked for a server, or for etcd, by flag or environment
	}
	ctx, err := loadContext(configPath(), c.context)
	if err != nil || ctx == nil {
		return err
	}
	if c.server == "" {
		c.server = ctx.Server
	}
	if c.serverCA == "" {
		c.serverCA = ctx.ServerCA
	}
	if c.token == "" {
		c.token = ctx.Token
	}
	return nil
}
