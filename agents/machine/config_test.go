package machine

import (
	"strings"
	"testing"
	"time"

	"github.com/kilnhq/kiln/agents/machine/facts"
)

const base = "console=ttyS0 kiln.url=http://10.42.0.1:8080/ kiln.machine=vm-1 kiln.token=secret "

func TestParseCmdline(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cmdline string
		want    Config
		err     string
	}{
		{cmdline: base, want: Config{URL: "http://10.42.0.1:8080", Machine: "vm-1", Token: "secret", After: AfterPowerOff, LLDPWait: facts.DefaultLLDPWait}},
		{cmdline: base + "kiln.after=wait kiln.debug kiln.purpose=commission kiln.lldp=5s", want: Config{URL: "http://10.42.0.1:8080", Machine: "vm-1", Token: "secret", After: AfterWait, Debug: true, Purpose: "commission", LLDPWait: 5 * time.Second}},
		{cmdline: base + "kiln.lldp=0", want: Config{URL: "http://10.42.0.1:8080", Machine: "vm-1", Token: "secret", After: AfterPowerOff}},
		{cmdline: base + "kiln.lldp=off", want: Config{URL: "http://10.42.0.1:8080", Machine: "vm-1", Token: "secret", After: AfterPowerOff}},
		{cmdline: base + "kiln.lldp=30", err: `kiln.lldp="30": want a duration`},
		{cmdline: base + "kiln.lldp=-1s", err: `kiln.lldp="-1s"`},
		{cmdline: base + "kiln.lldp=10h", err: `kiln.lldp="10h"`},
		{cmdline: base + "kiln.after=halt", err: `kiln.after="halt"`},
		{cmdline: "kiln.url=ftp://x kiln.lldp=x", err: "kiln.lldp=\"x\": want a duration from 0 (off) to 5m0s, e.g. 31s\nkiln.url=\"ftp://x\" is not an http(s) URL\nkiln.machine is missing\nkiln.token is missing"},
	} {
		got, err := ParseCmdline(tc.cmdline)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want %q", tc.cmdline, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %+v, %v; want %+v", tc.cmdline, got, err, tc.want)
		}
	}
}

// FuzzParseCmdline: the command line is typed by people and may carry
// anything; parsing never panics, and what it accepts is valid.
func FuzzParseCmdline(f *testing.F) {
	f.Add(base + "kiln.lldp=31s kiln.after=reboot")
	f.Add("kiln.url=https://[::1]:8443 kiln.machine=m kiln.token=t kiln.lldp=1e400h")
	f.Fuzz(func(t *testing.T, cmdline string) {
		c, err := ParseCmdline(cmdline)
		if err != nil {
			return
		}
		if c.URL == "" || c.Machine == "" || c.Token == "" || c.LLDPWait < 0 || c.LLDPWait > MaxLLDPWait {
			t.Fatalf("accepted %q as %+v", cmdline, c)
		}
	})
}
