package netlab

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// PerfOpts is a perfdhcp run (DHCPv4). perfdhcp acts as a relay: it sends
// from port 67 of the local address with giaddr set to it, so the server
// needs a subnet containing that address, and replies come back by unicast.
type PerfOpts struct {
	Server   string        // the server's address
	Local    string        // -l: local interface or address
	Rate     int           // -r: DORA exchanges started per second; 0 with Scenario "avalanche"
	Clients  int           // -R: distinct simulated clients (MACs)
	Duration time.Duration // -p: test period (basic scenario)
	Scenario string        // "basic" (default) or "avalanche"
	BaseMAC  string        // -b mac=...: first simulated MAC, to keep runs apart
	Args     []string      // anything else, before the server
	Timeout  time.Duration // kill perfdhcp after this (default Duration+60s)
}

// Exchange is perfdhcp's statistics for one exchange (DISCOVER-OFFER or
// REQUEST-ACK).
type Exchange struct {
	Sent, Received, Drops, Orphans, Rejected, NonUnique int
	DropRatio                                           float64 // percent, as perfdhcp prints it
	MinDelay, AvgDelay, MaxDelay, StdDev                time.Duration
}

// PerfResult is a parsed perfdhcp report.
type PerfResult struct {
	Rate         float64 // completed 4-way exchanges per second
	ExpectedRate float64
	Malformed    int
	DO, RA       Exchange
	// Avalanche scenario.
	Took        time.Duration // "It took ... to provision N clients"
	Provisioned int
	Sent        int // requests sent + resent
	Resent      int
	Responses   int
	ExitCode    int
	Output      string
}

// DropFraction is the share of started DORA exchanges that did not
// complete: 1 - ACKs received / DISCOVERs sent.
func (r *PerfResult) DropFraction() float64 {
	if r.DO.Sent == 0 {
		return 1
	}
	return 1 - float64(r.RA.Received)/float64(r.DO.Sent)
}

// Perfdhcp runs perfdhcp in the namespace to completion and parses its
// report. Exit code 3 (drops) is not an error; the caller judges drops.
func Perfdhcp(n *NS, o PerfOpts) (*PerfResult, error) {
	args := []string{"perfdhcp", "-4"}
	if o.Local != "" {
		args = append(args, "-l", o.Local)
	}
	if o.Scenario != "" {
		args = append(args, "--scenario", o.Scenario)
	}
	if o.Rate > 0 {
		args = append(args, "-r", strconv.Itoa(o.Rate))
	}
	if o.Clients > 0 {
		args = append(args, "-R", strconv.Itoa(o.Clients))
	}
	if o.Duration > 0 {
		args = append(args, "-p", strconv.Itoa(int(o.Duration.Seconds())))
	}
	if o.BaseMAC != "" {
		args = append(args, "-b", "mac="+o.BaseMAC)
	}
	args = append(args, o.Args...)
	if o.Server != "" {
		args = append(args, o.Server)
	}
	timeout := o.Timeout
	if timeout == 0 {
		timeout = o.Duration + 60*time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	r, perr := ParsePerfdhcp(string(out))
	if cmd.ProcessState != nil {
		r.ExitCode = cmd.ProcessState.ExitCode()
	}
	if ctx.Err() != nil {
		return r, fmt.Errorf("perfdhcp %s: killed after %s\n%s", strings.Join(args[1:], " "), timeout, tail(string(out), 3000))
	}
	if err != nil && r.ExitCode != 3 {
		return r, fmt.Errorf("perfdhcp %s: %v\n%s", strings.Join(args[1:], " "), err, tail(string(out), 3000))
	}
	if perr != nil {
		return r, fmt.Errorf("perfdhcp %s: %v\n%s", strings.Join(args[1:], " "), perr, tail(string(out), 3000))
	}
	return r, nil
}

var (
	reRate     = regexp.MustCompile(`(?m)^Rate: ([0-9.]+) 4-way exchanges/second(?:, expected rate: ([0-9.]+))?`)
	reSection  = regexp.MustCompile(`(?m)^\*\*\*Statistics for: ([A-Z-]+)\*\*\*$`)
	reKV       = regexp.MustCompile(`(?m)^([a-z ]+): ([0-9.]+)(?: (ms|%))?\s*$`)
	reMalform  = regexp.MustCompile(`(?m)^Malformed packets: (\d+)`)
	reTook     = regexp.MustCompile(`It took (\d+):(\d+):([0-9.]+) to provision (\d+) clients`)
	reSent     = regexp.MustCompile(`(?m)^Requests sent \+ resent: (\d+)`)
	reResent   = regexp.MustCompile(`(?m)^Requests resent: (\d+)`)
	reResponse = regexp.MustCompile(`(?m)^Responses received: (\d+)`)
)

// ParsePerfdhcp parses perfdhcp's (Kea 2.x) DHCPv4 report.
func ParsePerfdhcp(out string) (*PerfResult, error) {
	r := &PerfResult{Output: out}
	m := reRate.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no rate statistics in perfdhcp's output")
	}
	r.Rate, _ = strconv.ParseFloat(m[1], 64)
	r.ExpectedRate, _ = strconv.ParseFloat(m[2], 64)
	if m := reMalform.FindStringSubmatch(out); m != nil {
		r.Malformed, _ = strconv.Atoi(m[1])
	}
	secs := reSection.FindAllStringSubmatchIndex(out, -1)
	for i, s := range secs {
		end := len(out)
		if i+1 < len(secs) {
			end = secs[i+1][0]
		}
		var ex *Exchange
		switch out[s[2]:s[3]] {
		case "DISCOVER-OFFER":
			ex = &r.DO
		case "REQUEST-ACK":
			ex = &r.RA
		default:
			continue
		}
		for _, kv := range reKV.FindAllStringSubmatch(out[s[1]:end], -1) {
			f, _ := strconv.ParseFloat(kv[2], 64)
			d := time.Duration(f * float64(time.Millisecond))
			switch kv[1] {
			case "sent packets":
				ex.Sent = int(f)
			case "received packets":
				ex.Received = int(f)
			case "drops":
				ex.Drops = int(f)
			case "drops ratio":
				ex.DropRatio = f
			case "orphans":
				ex.Orphans = int(f)
			case "rejected leases":
				ex.Rejected = int(f)
			case "non unique addresses":
				ex.NonUnique = int(f)
			case "min delay":
				ex.MinDelay = d
			case "avg delay":
				ex.AvgDelay = d
			case "max delay":
				ex.MaxDelay = d
			case "std deviation":
				ex.StdDev = d
			}
		}
	}
	if len(secs) == 0 {
		return r, fmt.Errorf("no exchange statistics in perfdhcp's output")
	}
	if m := reTook.FindStringSubmatch(out); m != nil {
		h, _ := strconv.Atoi(m[1])
		mi, _ := strconv.Atoi(m[2])
		s, _ := strconv.ParseFloat(m[3], 64)
		r.Took = time.Duration(h)*time.Hour + time.Duration(mi)*time.Minute + time.Duration(s*float64(time.Second))
		r.Provisioned, _ = strconv.Atoi(m[4])
	}
	if m := reSent.FindStringSubmatch(out); m != nil {
		r.Sent, _ = strconv.Atoi(m[1])
	}
	if m := reResent.FindStringSubmatch(out); m != nil {
		r.Resent, _ = strconv.Atoi(m[1])
	}
	if m := reResponse.FindStringSubmatch(out); m != nil {
		r.Responses, _ = strconv.Atoi(m[1])
	}
	return r, nil
}
