package machine

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/kilnhq/kiln/agents/machine/facts"
)

// What the agent does once its task is done.
const (
	AfterPowerOff = "poweroff"
	AfterReboot   = "reboot"
	AfterWait     = "wait" // stay up (for debugging at the console)
)

// Config is the agent's arguments, from the kernel command line.
type Config struct {
	URL     string // kiln.url: the rack's boot server, e.g. http://10.42.0.1:8080
	Machine string // kiln.machine
	Purpose string // kiln.purpose: what the boot script was for; the task decides
	Token   string // kiln.token: the boot token, a secret
	After   string // kiln.after: poweroff (default), reboot, wait
	Debug   bool   // kiln.debug=1
	// LLDPWait (kiln.lldp=31s) is how long from the agent's start it
	// listens for LLDP frames; 0 turns listening off.
	LLDPWait time.Duration
}

// MaxLLDPWait bounds kiln.lldp: a typo must not hold a boot for hours.
const MaxLLDPWait = 5 * time.Minute

// ParseCmdline reads the kiln.* arguments of a kernel command line
// (/proc/cmdline). kiln.url, kiln.machine and kiln.token are required.
func ParseCmdline(cmdline string) (Config, error) {
	c := Config{After: AfterPowerOff, LLDPWait: facts.DefaultLLDPWait}
	var errs []error
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "kiln.url":
			c.URL = strings.TrimSuffix(v, "/")
		case "kiln.machine":
			c.Machine = v
		case "kiln.purpose":
			c.Purpose = v
		case "kiln.token":
			c.Token = v
		case "kiln.after":
			c.After = v
		case "kiln.debug":
			c.Debug = v == "1" || v == "true" || v == ""
		case "kiln.lldp":
			d, err := time.ParseDuration(v)
			if v == "0" || v == "off" {
				d, err = 0, nil
			}
			if err != nil || d < 0 || d > MaxLLDPWait {
				errs = append(errs, fmt.Errorf("kiln.lldp=%q: want a duration from 0 (off) to %s, e.g. 31s", v, MaxLLDPWait))
			}
			c.LLDPWait = d
		}
	}
	if c.URL == "" {
		errs = append(errs, errors.New("kiln.url is missing"))
	} else if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("kiln.url=%q is not an http(s) URL", c.URL))
	}
	if c.Machine == "" {
		errs = append(errs, errors.New("kiln.machine is missing"))
	}
	if c.Token == "" {
		errs = append(errs, errors.New("kiln.token is missing"))
	}
	switch c.After {
	case AfterPowerOff, AfterReboot, AfterWait:
	default:
		errs = append(errs, fmt.Errorf("kiln.after=%q: want poweroff, reboot or wait", c.After))
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("kernel command line: %w", errors.Join(errs...))
	}
	return c, nil
}

// LogValue keeps the token out of logs.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("url", c.URL), slog.String("machine", c.Machine), slog.String("purpose", c.Purpose),
		slog.String("after", c.After), slog.Bool("debug", c.Debug), slog.Duration("lldp", c.LLDPWait), slog.Bool("token_set", c.Token != ""),
	)
}
