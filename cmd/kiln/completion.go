package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/kilnhq/kiln/spec"
)

// Shell completion without a CLI framework (decision 7): the scripts ask
// the hidden `kiln __complete WORDS...` for the candidates of the word
// after WORDS, one a line; the shell filters them by what is typed.

const bashCompletion = `# kiln completion for bash: source <(kiln completion bash)
_kiln() {
	local IFS=$'\n'
	COMPREPLY=($(compgen -W "$(kiln __complete "${COMP_WORDS[@]:1:COMP_CWORD-1}" 2>/dev/null)" -- "${COMP_WORDS[COMP_CWORD]}"))
}
complete -o default -F _kiln kiln
`

const zshCompletion = `#compdef kiln
# kiln completion for zsh: source <(kiln completion zsh) after compinit
_kiln() {
	local -a c
	c=("${(@f)$(kiln __complete "${(@)words[2,CURRENT-1]}" 2>/dev/null)}")
	compadd -a c
}
compdef _kiln kiln
`

const fishCompletion = `# kiln completion for fish: kiln completion fish | source
function __kiln_complete
	set -l words (commandline -opc)
	kiln __complete $words[2..-1] 2>/dev/null
end
complete -c kiln -f -a '(__kiln_complete)'
`

func runCompletion(_ context.Context, args []string, out, errOut io.Writer) int {
	scripts := map[string]string{"bash": bashCompletion, "zsh": zshCompletion, "fish": fishCompletion}
	if len(args) != 1 || scripts[args[0]] == "" {
		fmt.Fprintln(errOut, "Usage: kiln completion bash|zsh|fish\n\n  bash: source <(kiln completion bash)\n  zsh:  source <(kiln completion zsh)   (after compinit)\n  fish: kiln completion fish | source")
		return exitUsage
	}
	io.WriteString(out, scripts[args[0]])
	return exitOK
}

// machineArgs are the commands whose next positional word is a machine.
var machineArgs = map[string]int{"retry": 0, "events": 0, "describe": 1, "wait": 1, "power": 1}

// runComplete prints the candidates for the word after words (hidden).
// Machine names come from the API or etcd as the environment says
// (KILN_SERVER and KILN_TOKEN, or KILN_ETCD_ENDPOINTS), within 2 s; any
// failure just gives no names.
func runComplete(ctx context.Context, words []string, out, _ io.Writer) int {
	var pos []string
	for _, w := range words {
		if !strings.HasPrefix(w, "-") {
			pos = append(pos, w)
		}
	}
	var c []string
	switch {
	case len(pos) == 0:
		for n := range commands() {
			c = append(c, n)
		}
	case pos[0] == "get" && len(pos) == 1:
		for r := range resources {
			if len(r) > 1 {
				c = append(c, r)
			}
		}
	case pos[0] == "get" && len(pos) == 2 && resources[pos[1]] == spec.KindMachine,
		pos[0] == "describe" && len(pos) == 2,
		pos[0] == "wait" && len(pos) == 2:
		c = machineNames(ctx)
	case pos[0] == "describe" || pos[0] == "wait":
		if len(pos) == 1 {
			c = []string{"machine"}
		}
	case pos[0] == "power" && len(pos) == 1:
		c = []string{"on", "off", "soft-off", "cycle", "status", "boot-network", "boot-disk"}
	case pos[0] == "completion" && len(pos) == 1:
		c = []string{"bash", "zsh", "fish"}
	case pos[0] == "token" && len(pos) == 1:
		c = []string{"create", "list", "revoke"}
	default:
		if n, ok := machineArgs[pos[0]]; ok && len(pos) == 1+n {
			c = machineNames(ctx)
		}
	}
	slices.Sort(c)
	for _, s := range c {
		fmt.Fprintln(out, s)
	}
	return exitOK
}

func machineNames(ctx context.Context) []string {
	var cf clientFlags
	fs := newFlags("__complete", "", io.Discard)
	cf.register(fs) // defaults from the environment
	r, _, closeFn, ok := cf.open("__complete", io.Discard)
	if !ok {
		return nil
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	snap, err := r.Snapshot(ctx, spec.KindMachine)
	if err != nil {
		return nil
	}
	return spec.SortedNames(snap.Inventory.Machines)
}
